"""`python -m services.preprocess`: the preprocess service alone (compose, Kubernetes)."""

import asyncio

from services.preprocess.service import PreprocessService
from shared.platform.bootstrap import (
    configure_process,
    connect,
    freeze_startup_objects,
    shutdown,
    wait_for_shutdown,
)
from shared.platform.config import PreprocessSettings, load_settings
from shared.platform.health import serve_health


async def main() -> None:
    settings = load_settings(PreprocessSettings)
    configure_process("preprocess", settings)
    bus, store = await connect(settings)
    await PreprocessService(bus, store, settings).start()
    health = await serve_health({"broker": bus.ping, "store": store.ping}, settings.health_port)
    freeze_startup_objects()  # ~117,000 objects a full collection would walk mid-job
    try:
        await wait_for_shutdown()
    finally:
        await shutdown(bus)
        await health.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
