"""The embedded broker under a concurrent publisher and consumer.

kombu's filesystem transport wrote a message file in place while the consumer
read every ``*.msg`` it found: a consumer could read an empty file, and the
Celery worker died with "Unrecoverable error: JSONDecodeError" (seen in the
Orthanc round trip). neuroseg's embedded broker writes each message atomically;
here a publisher and a consumer race for 400 messages and every one must
arrive, once, intact (kombu's own transport lost 18 of 400 with 8 decode
errors in the same race when this was written).
"""

from __future__ import annotations

import threading

from kombu import Connection

from neuroseg.worker import queue

MESSAGES = 400


def race(transport: str, options: dict) -> tuple[list[int], list[BaseException]]:
    """A publisher puts MESSAGES messages while a consumer reads the queue folder as fast as it can."""
    from kombu.exceptions import ChannelError
    from queue import Empty

    received: list[int] = []
    errors: list[BaseException] = []
    published = threading.Event()

    def consume() -> None:
        with Connection("filesystem://", transport=transport, transport_options=options) as connection:
            channel = connection.default_channel
            while len(received) < MESSAGES:
                finished = published.is_set()  # read before looking: a later Empty is final
                try:
                    payload = channel._get("race")
                except Empty:
                    if finished:
                        break
                    continue
                except (ValueError, ChannelError) as exc:  # an empty or half-written message file
                    errors.append(exc)
                    continue
                received.append(payload["body"]["number"])

    consumer = threading.Thread(target=consume)
    consumer.start()
    with Connection("filesystem://", transport=transport, transport_options=options) as connection:
        channel = connection.default_channel
        for number in range(MESSAGES):
            channel._put("race", {"body": {"number": number, "padding": "x" * 20_000}})
    published.set()
    consumer.join(120)
    return received, errors


def test_concurrent_publish_and_consume_lose_and_break_nothing(make_settings, tmp_path):
    options = queue._filesystem_options(make_settings(data_dir=tmp_path / "data"))
    received, errors = race(queue.ATOMIC_FILESYSTEM_TRANSPORT, options)
    assert not errors, errors[:3]
    assert sorted(received) == list(range(MESSAGES))
