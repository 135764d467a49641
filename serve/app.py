"""The application: the state every handler shares, and the routes.

`ServerState` holds the settings, the model, the scheduler, the metrics and the lifecycle
status; `make_app` maps the URLs to `serve.handlers`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import tornado.web

from .config import ServeConfig
from .handlers import (CompletionsHandler, HealthHandler, MetricsHandler, ModelsHandler,
                       NotFoundHandler, OpenAPIHandler, log_access)
from .metrics import Metrics
from .scheduler import Scheduler
from .serving import LOADING, READY


@dataclass
class ServerState:
    """What every handler shares: settings, model, scheduler, metrics, lifecycle status."""

    config: ServeConfig
    status: str = LOADING
    generator: object = None
    scheduler: Scheduler | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    active: int = 0  # completion requests being answered
    metrics: Metrics = None

    def __post_init__(self):
        self.metrics = Metrics(scheduler=lambda: self.scheduler,
                               generator=lambda: self.generator,
                               ready=lambda: self.status == READY)

    def set_ready(self, generator) -> None:
        self.generator = generator
        config = self.config
        self.scheduler = Scheduler(generator, config.max_queue, speculate=config.speculate,
                                   lines_ahead=config.speculate_lines,
                                   max_batch=config.max_batch,
                                   kv_cache_bytes=config.kv_cache_bytes)
        self.status = READY


def make_app(state: ServerState) -> tornado.web.Application:
    args = {"state": state}
    routes = [
        (r"/v1/engines/([^/]+)/completions", CompletionsHandler, args),
        (r"/v1/completions", CompletionsHandler, args),
        (r"/v1/models", ModelsHandler, args),
        (r"/v1/models/(.+)", ModelsHandler, args),
        (r"/v1/engines", ModelsHandler, args),
        (r"/health", HealthHandler, args),
        (r"/v1/health", HealthHandler, args),
        (r"/metrics", MetricsHandler, args),
        (r"/openapi.json", OpenAPIHandler, args),
    ]
    return tornado.web.Application(routes, default_handler_class=NotFoundHandler,
                                   default_handler_args=args, log_function=log_access,
                                   compress_response=False)
