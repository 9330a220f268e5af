"""The embedded broker overrides kombu's ``filesystem.Channel._put``; these tests fail when kombu changes.

The override (``neuroseg.worker.queue.AtomicChannel``) exists because kombu's
filesystem transport creates ``<name>.msg`` and only then writes it, while a
consumer reads any ``*.msg`` at once. pyproject.toml pins kombu to the range
these tests were run against; before widening it, run them on the new kombu:
a failure says either that the override no longer fits the private method it
replaces, or that kombu fixed the race and the override can go.
"""

from __future__ import annotations

import inspect
import json
from queue import Empty

import pytest
from kombu import Connection
from kombu.transport import filesystem

from neuroseg.worker import queue


@pytest.fixture
def options(make_settings, tmp_path):
    return queue._filesystem_options(make_settings(data_dir=tmp_path / "data"))


def test_the_private_method_we_override_keeps_its_signature():
    parameters = inspect.signature(filesystem.Channel._put).parameters
    assert list(parameters) == ["self", "queue", "payload", "kwargs"]
    assert parameters["kwargs"].kind is inspect.Parameter.VAR_KEYWORD
    assert issubclass(queue.AtomicFilesystemTransport.Channel, filesystem.Channel)
    assert queue.AtomicFilesystemTransport.Channel._put is not filesystem.Channel._put


def test_kombus_reader_ignores_the_temporary_name_our_writer_uses(options):
    """Our writer relies on this: a file whose name does not end in ``.<queue>.msg`` is never read."""
    folder = options["data_folder_in"]
    with open(f"{folder}/.1_abc.neuroseg.msg.x1y2.tmp", "wb") as half_written:
        half_written.write(b'{"body": ')
    with Connection("filesystem://", transport_options=options) as connection:
        with pytest.raises(Empty):
            connection.default_channel._get("neuroseg")


def test_kombus_own_writer_still_shows_a_reader_an_empty_message(options, monkeypatch):
    """kombu's ``_put`` opens the final ``.msg`` name before writing: a reader in between gets no JSON.

    When this fails, kombu writes its message files atomically (or differently):
    check, then remove ``AtomicChannel`` from worker/queue.py and this file.
    """
    seen: list[object] = []
    real_lock = filesystem.lock

    with Connection("filesystem://", transport_options=options) as reader:
        def read_while_the_writer_holds_the_file(handle, flags):  # noqa: ANN001, ANN202 - kombu's lock
            try:
                seen.append(reader.default_channel._get("neuroseg"))
            except (ValueError, Empty) as exc:
                seen.append(exc)
            return real_lock(handle, flags)

        with monkeypatch.context() as patch, Connection("filesystem://", transport_options=options) as writer:
            patch.setattr(filesystem, "lock", read_while_the_writer_holds_the_file)
            writer.default_channel._put("neuroseg", {"body": "job"})
    assert len(seen) == 1, "kombu's _put no longer locks an open message file: review the override"
    assert isinstance(seen[0], json.JSONDecodeError), (
        f"a reader during kombu's own write got {seen[0]!r}, not an empty message: kombu may have fixed the race"
    )


def test_our_writer_never_shows_a_reader_a_partial_message(options, monkeypatch):
    """The same probe on the embedded broker: a reader looking while the message is written finds nothing."""
    import neuroseg.common.files as files

    seen: list[object] = []
    real_replace = files.os.replace

    with Connection("filesystem://", transport=queue.ATOMIC_FILESYSTEM_TRANSPORT,
                    transport_options=options) as reader:
        def read_before_the_rename(source, target):  # noqa: ANN001, ANN202 - os.replace
            try:
                seen.append(reader.default_channel._get("neuroseg"))
            except (ValueError, Empty) as exc:
                seen.append(exc)
            return real_replace(source, target)

        with monkeypatch.context() as patch, Connection(
                "filesystem://", transport=queue.ATOMIC_FILESYSTEM_TRANSPORT, transport_options=options) as writer:
            patch.setattr(files.os, "replace", read_before_the_rename)
            writer.default_channel._put("neuroseg", {"body": "job"})
        assert len(seen) == 1 and isinstance(seen[0], Empty), seen
        assert reader.default_channel._get("neuroseg") == {"body": "job"}
