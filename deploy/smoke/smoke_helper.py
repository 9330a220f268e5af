"""Small steps of deploy/smoke.sh that are easier in Python (standard library only).

    python3 smoke_helper.py ports N
    python3 smoke_helper.py orthanc-config SRC DST DICOM_PORT HTTP_PORT LISTENER_PORT
    python3 smoke_helper.py job ADMIN_URL TOKEN STUDY_UID            # prints "<jobs> <state> <attempts>"
    python3 smoke_helper.py results ORTHANC_URL STUDY_UID            # prints the result kinds in Orthanc

Every command exits 0 and prints one line; "job" and "results" print "none"
while there is nothing yet.
"""

from __future__ import annotations

import json
import socket
import sys
import urllib.error
import urllib.request

RESULT_KINDS = {
    "1.2.840.10008.5.1.4.1.1.66.4": "SEG",
    "1.2.840.10008.5.1.4.1.1.30": "PM",
    "1.2.840.10008.5.1.4.1.1.88.34": "SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "SR",
    "1.2.840.10008.5.1.4.1.1.88.22": "SR",
}


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def orthanc_config(src: str, dst: str, dicom_port: int, http_port: int, listener_port: int) -> None:
    """The trial orthanc.json on other ports, with the listener on this host."""
    with open(src) as handle:
        config = json.load(handle)
    config["DicomPort"] = dicom_port
    config["HttpPort"] = http_port
    aet = config["DicomModalities"]["neuroseg"][0]
    config["DicomModalities"]["neuroseg"] = [aet, "127.0.0.1", listener_port]
    with open(dst, "w") as handle:
        json.dump(config, handle, indent=2)


def get_json(url: str, token: str | None = None, data: bytes | None = None) -> object:
    request = urllib.request.Request(url, data=data)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=20) as response:
        return json.load(response)


def job(admin: str, token: str, study_uid: str) -> str:
    try:
        study = get_json(f"{admin}/api/studies/{study_uid}", token)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return "none"
        raise
    jobs = study["jobs"]
    if not jobs:
        return "none"
    latest = jobs[0]
    return f"{len(jobs)} {latest['state']} {latest['attempts']}"


def results(orthanc: str, study_uid: str) -> str:
    found = get_json(f"{orthanc}/tools/lookup", data=study_uid.encode())
    studies = [item["ID"] for item in found if item["Type"] == "Study"]
    if not studies:
        return "none"
    kinds: dict[str, int] = {}
    for series in get_json(f"{orthanc}/studies/{studies[0]}/series"):
        instances = series["Instances"]
        if not instances:
            continue
        with urllib.request.urlopen(f"{orthanc}/instances/{instances[0]}/metadata/SopClassUid", timeout=20) as r:
            kind = RESULT_KINDS.get(r.read().decode().strip())
        if kind:
            kinds[kind] = kinds.get(kind, 0) + 1
    return " ".join(f"{kind}={count}" for kind, count in sorted(kinds.items())) or "none"


def main(argv: list[str]) -> None:
    command, args = argv[0], argv[1:]
    if command == "ports":
        print(" ".join(map(str, free_ports(int(args[0])))))
    elif command == "orthanc-config":
        orthanc_config(args[0], args[1], int(args[2]), int(args[3]), int(args[4]))
    elif command == "job":
        print(job(*args))
    elif command == "results":
        print(results(*args))
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv[1:])
