"""Helpers the test modules share (one copy each): free ports, PNG bytes, small Serve actors, a
moto S3 server."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

# the repository (tests/ is one level below it)
REPO_ROOT = Path(__file__).resolve().parent.parent

# Serve actors small enough for several apps on a 2-core machine
SMALL = {"ray_actor_options": {"num_cpus": 0.25}}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct free ports on ``host`` (all held open together while they are picked)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]


def png_bytes(arr: np.ndarray) -> bytes:
    """A uint8 RGB array as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@contextlib.contextmanager
def moto_s3(bucket: str) -> Iterator:
    """A moto S3 server on 127.0.0.1 that checks credentials, with one bucket and one user
    whose keys are set (AWS_*, AWS_ENDPOINT_URL) in this process for the block; yields a boto3
    client. Start Ray (if at all) before: its processes then lack the keys, like a cluster
    started before the user's shell had them."""
    import boto3
    import pytest
    import requests
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = pytest.MonkeyPatch()
    try:
        # Authentication on after the 3 IAM calls that create the user and its key. moto keeps
        # its state per process, across servers: each server gets a user of its own.
        requests.post(f"{endpoint}/moto-api/reset-auth", data="3", timeout=10).raise_for_status()
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        user = f"raystyle-{uuid.uuid4().hex[:8]}"
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        for name, value in (("AWS_ACCESS_KEY_ID", key["AccessKeyId"]),
                            ("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"]),
                            ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_ENDPOINT_URL", endpoint)):
            env.setenv(name, value)
        env.delenv("AWS_SESSION_TOKEN", raising=False)
        client = boto3.client("s3", endpoint_url=endpoint)
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=bucket)
        yield client
    finally:
        env.undo()
        with contextlib.suppress(Exception):
            requests.post(f"{endpoint}/moto-api/reset-auth", data="inf", timeout=10)
        server.stop()


def s3_keys(client, bucket: str, prefix: str = "") -> set[str]:
    """Every key in ``bucket`` under ``prefix`` (the prefix cut off)."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"][len(prefix):] for page in pages for o in page.get("Contents", [])}


# -- tiny videos (PyAV) for the hostile-media tests -------------------------------------
SIDE = 32


def small_clip(path: Path, photo: np.ndarray, frames: int = 6, audio: bool = False) -> Path:
    from raystyle.infer.video import write_pan_clip

    write_pan_clip(path, photo, frames=frames, size=(SIDE, SIDE), audio=audio)
    return path


def h264_packets(width: int, height: int, frames: int, start: int) -> list:
    """An H.264 encode with its headers in every keyframe (Annex B), as a stream that changes
    its size mid-way carries them."""
    import av

    cc = av.CodecContext.create("libx264", "w")
    cc.width, cc.height, cc.pix_fmt, cc.time_base = width, height, "yuv420p", Fraction(1, 24)
    cc.options = {"x264-params": "repeat-headers=1", "preset": "ultrafast"}
    packets = []
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), 40 * i % 255, np.uint8), format="rgb24")
        frame.pts, frame.time_base = start + i, Fraction(1, 24)
        packets += cc.encode(frame)
    return packets + cc.encode(None)


def mkv_of(path: Path, packets: list, size: tuple[int, int], pts: list[int] | None = None,
           time_base: Fraction = Fraction(1, 24)) -> Path:
    """H.264 packets muxed as they are into Matroska, the header saying ``size``."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("h264", rate=24)
        stream.width, stream.height = size
        stream.time_base = time_base
        for i, p in enumerate(packets):
            packet = av.Packet(bytes(p))
            packet.pts = packet.dts = i if pts is None else pts[i]
            packet.time_base, packet.stream, packet.is_keyframe = time_base, stream, p.is_keyframe
            out.mux(packet)
    return path


# -- the CLI in this process -----------------------------------------------------------------
def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``raystyle ARGV`` run in this process."""
    from raystyle.cli import main as cli

    capsys.readouterr()
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(argv: list[str], capsys) -> str:
    """The one ``raystyle: error`` line of a refused command (exit 2, no traceback)."""
    rc, out, err = run(argv, capsys)
    lines = [line for line in err.splitlines() if "raystyle: error" in line]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, (rc, out, err)
    return lines[0]
