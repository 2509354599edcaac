"""The real servers the integration tests run on work the way the services use them."""

from __future__ import annotations

import io
import secrets
import urllib.request
from datetime import timedelta

import aio_pika
import pytest
from minio import Minio
from pamqp.commands import Basic

from shared.platform.topology import CONSUMER_TIMEOUT_MS
from tests.servers import RabbitMQServer, S3Endpoint

pytestmark = pytest.mark.servers


async def test_quorum_queue_round_trip_with_confirms(rabbitmq_url: str) -> None:
    queue_name = f"smoke.{secrets.token_hex(4)}"
    connection = await aio_pika.connect_robust(rabbitmq_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        # The services' queues: durable quorum queues with a redelivery limit.
        queue = await channel.declare_queue(
            queue_name,
            durable=True,
            arguments={"x-queue-type": "quorum", "x-delivery-limit": 3},
        )
        confirmation = await channel.default_exchange.publish(
            aio_pika.Message(b"payload", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=queue_name,
        )
        # With publisher confirms the broker acks only once the quorum queue has the message.
        assert isinstance(confirmation, Basic.Ack)

        message = await queue.get(timeout=10, no_ack=False)
        assert message is not None
        assert message.body == b"payload"
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        await message.ack()
        assert await queue.get(fail=False) is None
        await queue.delete(if_unused=False, if_empty=False)


def test_broker_consumer_timeout_is_the_projects(rabbitmq_server: RabbitMQServer | None) -> None:
    if rabbitmq_server is None:
        pytest.skip("RESTORA_TEST_BROKER_URL points at a broker these tests did not configure")
    answer = rabbitmq_server.ctl("eval", "application:get_env(rabbit, consumer_timeout).")
    assert answer.strip() == f"{{ok,{CONSUMER_TIMEOUT_MS}}}"


def test_s3_bucket_objects_and_presigned_get(s3_server: S3Endpoint) -> None:
    client = Minio(
        s3_server.endpoint,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        secure=s3_server.secure,
        region=s3_server.region,
    )
    bucket = f"smoke-{secrets.token_hex(4)}"
    body = secrets.token_bytes(200_000)
    client.make_bucket(bucket)
    try:
        client.put_object(bucket, "jobs/x/input.bin", io.BytesIO(body), len(body))

        response = client.get_object(bucket, "jobs/x/input.bin")
        try:
            assert response.read() == body
        finally:
            response.close()
            response.release_conn()

        url = client.presigned_get_object(bucket, "jobs/x/input.bin", expires=timedelta(minutes=5))
        with urllib.request.urlopen(url, timeout=10) as fetched:
            assert fetched.read() == body

        client.remove_object(bucket, "jobs/x/input.bin")
        assert list(client.list_objects(bucket, recursive=True)) == []
    finally:
        client.remove_bucket(bucket)


def test_s3_rejects_wrong_secret(s3_server: S3Endpoint) -> None:
    from minio.error import S3Error

    client = Minio(
        s3_server.endpoint,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key + "x",
        secure=s3_server.secure,
        region=s3_server.region,
    )
    with pytest.raises(S3Error):
        client.list_buckets()
