"""The one registry: every model service this build has, and what the gateway needs to know about it.

A new model family is one package (service, routes) plus one entry here. The entry is the single source for
which class runs the model, which routes module mounts its public routes, where its settings live, and the
names it answers to (GET /v1/models, /v1/models/{id}, the chat dispatch). The gateway imports nothing else
per service.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Iterable

from services.runtime.core.languages import TTS_MODEL_LANGUAGES
from services.runtime.core.settings import SERVICE_KEYS, ServiceSettings, Settings


def _no_extra_names(_cfg) -> list[str]:
    return []


def _tts_language_names(_cfg) -> list[str]:
    """TTS answers to tts-1-<language> / tts-1-hd-<language> too (the name forces the language)."""
    return [f"{p}{k}" for p in ("tts-1-", "tts-1-hd-") for k in TTS_MODEL_LANGUAGES]


@dataclass(frozen=True)
class Entry:
    key: str  # QWEN_SERVICES name, the gateway's attribute for the service, and an alias of its model
    service: str  # "module:Class" of the BentoML service that runs the model
    routes: str  # module with `ROUTES` (metric labels), and `router` and/or `CHAT` when it has public routes
    settings: str  # attribute of Settings holding this service's settings
    extra_names: Callable[[ServiceSettings], list[str]] = _no_extra_names  # names beyond id, aliases and key

    def config(self, settings: Settings) -> ServiceSettings:
        return getattr(settings, self.settings)

    def aliases(self, settings: Settings) -> list[str]:
        """Every name but the id that /v1/models lists for this model (configured aliases, extras, the key)."""
        cfg = self.config(settings)
        return list(dict.fromkeys([*getattr(cfg, "aliases", []), *self.extra_names(cfg), self.key]))

    def chat_names(self, settings: Settings) -> list[str]:
        """The names the chat route dispatches to this model: the id, its last path part, every alias."""
        model = self.config(settings).model
        return list(dict.fromkeys([model, _last_part(model), *self.aliases(settings)]))

    def routes_module(self) -> ModuleType:
        return importlib.import_module(self.routes)

    def service_class(self):
        module, name = self.service.split(":")
        return getattr(importlib.import_module(module), name)


REGISTRY: dict[str, Entry] = {e.key: e for e in (
    Entry("aligner", "services.aligner.service:Aligner", "services.aligner.routes", "aligner"),
    Entry("asr", "services.asr.service:ASR", "services.asr.routes", "asr"),
    Entry("tts", "services.tts.service:TTS", "services.tts.routes", "tts", _tts_language_names),
    Entry("captioner", "services.captioner.service:Captioner", "services.captioner.routes", "captioner"),
    Entry("diagram", "services.diagram.service:Diagram", "services.diagram.routes", "diagram"),
    Entry("vl", "services.vl.service:VL", "services.vl.routes", "vl"),
)}
assert tuple(REGISTRY) == SERVICE_KEYS, "settings.SERVICE_KEYS and the registry must name the same services"


def _last_part(name: str) -> str:
    return name.rstrip("/").split("/")[-1]


def model_key(settings: Settings, keys: Iterable[str], name: str, *, param: str = "model") -> str:
    """The service among `keys` that answers to `name` (its id, the id's last path part, an alias, an extra
    name), else a 404 model_not_found that lists what is served. The one model-name check of every route."""
    from services.runtime.core.errors import NotFound

    keys = list(keys)
    for key in keys:
        known = REGISTRY[key].chat_names(settings)
        if name in known or _last_part(name) in known:
            return key
    known = [n for key in keys for n in REGISTRY[key].chat_names(settings)]
    raise NotFound(f"model {name!r} is not served here; use one of: {', '.join(known)}", param=param,
                   code="model_not_found")


def resolve_model(settings: Settings, key: str, name: str, *, param: str = "model") -> None:
    """Accept `name` for the service `key`, else the 404 of `model_key`."""
    model_key(settings, [key], name, param=param)


def enabled_keys(settings: Settings) -> list[str]:
    """The services QWEN_SERVICES names (all of them when unset), in registry order as given."""
    wanted = settings.services if settings.services is not None else list(REGISTRY)
    missing = [k for k in wanted if k not in REGISTRY]
    if missing:
        raise RuntimeError(f"QWEN_SERVICES names services this build does not have: {missing}")
    return list(wanted)
