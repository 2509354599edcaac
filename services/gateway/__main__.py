"""`python -m services.gateway`: the gateway alone (compose, Kubernetes)."""

import asyncio

from services.gateway.app import create_app, running_gateway
from shared.platform.bootstrap import (
    configure_process,
    connect,
    freeze_startup_objects,
    shutdown,
    wait_for_shutdown,
)
from shared.platform.config import GatewaySettings, load_settings


async def main() -> None:
    settings = load_settings(GatewaySettings)
    configure_process("gateway", settings)
    bus, store = await connect(settings)
    async with running_gateway(create_app(bus, store, settings), settings.host, settings.port):
        freeze_startup_objects()  # ~118,000 objects a full collection would walk mid-request
        try:
            await wait_for_shutdown()
        finally:
            await shutdown(bus)


if __name__ == "__main__":
    asyncio.run(main())
