"""The server's life: listen, load the model off the loop, serve, stop gracefully."""
from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
import time
from typing import Callable

import tornado.httpserver
import tornado.netutil

from engine import EngineError, OptionError
from engine.runtime import import_paddle

from .app import ServerState, make_app
from .config import ServeConfig
from .serving import LOADING, READY, STOPPING

log = logging.getLogger("serve")


class Server:
    """One HTTP server around one ServerState; `generator` given means ready at once."""

    def __init__(self, config: ServeConfig, generator=None):
        self.config = config
        self.state = ServerState(config)
        self.app = make_app(self.state)
        self.http: tornado.httpserver.HTTPServer | None = None
        self.port = config.port
        if generator is not None:
            self.state.set_ready(generator)

    def listen(self) -> int:
        """Bind and start accepting (call on the running loop); returns the port."""
        sockets = tornado.netutil.bind_sockets(self.config.port, self.config.host)
        self.http = tornado.httpserver.HTTPServer(self.app, idle_connection_timeout=300)
        self.http.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        return self.port

    @property
    def url(self) -> str:
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"http://{host}:{self.port}"

    async def load(self, loader: Callable[[], object]) -> None:
        """Run `loader` in a daemon thread (a SIGTERM need not wait for it); then ready."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()

        def work():
            try:
                value = loader()
            except BaseException as exc:  # handed to the loop, raised there
                loop.call_soon_threadsafe(_settle, done, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, done, value, None)

        threading.Thread(target=work, name="cgserve-load", daemon=True).start()
        generator = await done
        if self.state.status == LOADING:
            self.state.set_ready(generator)

    async def shutdown(self, grace_s: float | None = None) -> None:
        """Stop accepting; let in-flight requests finish within the grace period; cancel the rest."""
        grace = self.config.grace_s if grace_s is None else grace_s
        state = self.state
        state.status = STOPPING
        if self.http is not None:
            self.http.stop()
        await _wait_until(lambda: state.active == 0, grace)
        if state.scheduler is not None:
            left = state.active
            state.scheduler.stop(cancel_running=True)
            if left:
                log.warning("grace period over: cancelled %d unfinished request(s)", left)
            await _wait_until(lambda: state.active == 0, 5.0)
            # the worker ends once its step is over (a cancelled prompt stops between two
            # layers): exiting while it is inside Paddle or numba would abort the process
            if not await _wait_until(lambda: state.scheduler.join(0), 30.0):
                log.warning("the engine's worker did not stop within 30 s")
        if self.http is not None:
            await self.http.close_all_connections()


def _settle(future: asyncio.Future, value, exc) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)


async def _wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def ready_message(server: Server) -> str:
    return (f"cgserve: serving {server.config.served_name} at {server.url}\n"
            f"  Fauxpilot (VSCode setting fauxpilot.server): {server.url}/v1/engines\n"
            f"  OpenAI clients (base_url): {server.url}/v1")


def catch_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def serve(config: ServeConfig, loader: Callable[[], object]) -> int:
    """Listen, load, serve until SIGTERM/SIGINT; returns the exit code."""
    # Paddle keeps its dygraph mode per thread and sets it up only in the importing thread:
    # imported first in the loading thread, the model fails in every other thread. So import
    # it here, on the main thread, before loading in the background (and before our signal
    # handlers: importing Paddle installs its own).
    import_paddle()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    catch_signals(loop, stop)
    server = Server(config)
    try:
        server.listen()
    except OSError as exc:  # the port is taken, or the address is not this machine's
        raise OptionError(f"cannot listen on {config.host}:{config.port} ({exc.strerror}); "
                          "pick another --port or --host") from None
    print(f"cgserve: loading {config.model} (health at {server.url}/health says loading)",
          file=sys.stderr, flush=True)
    loading = asyncio.ensure_future(server.load(loader))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if loading.done() and loading.exception() is not None:
        stopping.cancel()
        await server.shutdown(0)
        exc = loading.exception()
        if isinstance(exc, EngineError):
            raise exc
        raise RuntimeError(f"loading {config.model} failed: {exc}") from exc
    catch_signals(loop, stop)  # again: loading PaddleNLP's models resets SIGTERM in C
    if server.state.status == READY:
        print(ready_message(server), flush=True)
    await stopping
    loading.cancel()
    print("cgserve: stopping (finishing in-flight requests)", file=sys.stderr, flush=True)
    await server.shutdown()
    return 0


def run(config: ServeConfig, loader: Callable[[], object]) -> int:
    return asyncio.run(serve(config, loader))
