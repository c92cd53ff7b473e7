#!/usr/bin/python3
"""The reference agent of bench/'s `compare` scenario: what a ~50-line Python agent does.

One kazoo DataWatch per znode; each change renders every file that uses the znode with
str.format (no templates), writes a temp file and renames it over the destination (no
fsync), then runs the file's reload command with subprocess.call. Usage:

    /usr/bin/python3 agent.py CONFIG.json

CONFIG.json: {"hosts": "127.0.0.1:2181",
              "files": [{"dest": "/path/out.conf", "keys": ["/a", "/b"],
                         "format": "a = {0}\\nb = {1}\\n", "reload": "sh -c ':'"}]}
`format` gets the keys' values (UTF-8 text, "" for a missing znode) as positional arguments;
`reload` is split like a shell would (shlex) and run without a shell. A file is first
written once every key it uses has been read. Debian: apt-get install python3-kazoo.
"""
import json
import os
import shlex
import signal
import subprocess
import sys
import threading

from kazoo.client import KazooClient


def main():
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    users = {}  # znode -> the files that use it
    for f in cfg["files"]:
        f["argv"] = shlex.split(f["reload"])
        for key in f["keys"]:
            users.setdefault(key, []).append(f)
    values = {}
    # The first read of each watch runs on the main thread, later ones on kazoo's.
    lock = threading.Lock()

    def render(f):
        if any(key not in values for key in f["keys"]):
            return  # not every key read yet
        data = f["format"].format(*(values[key] for key in f["keys"])).encode()
        head, tail = os.path.split(f["dest"])
        tmp = os.path.join(head, "." + tail + ".tmp")
        with open(tmp, "wb") as out:
            out.write(data)
        os.rename(tmp, f["dest"])
        subprocess.call(f["argv"])

    def watch(key):
        def changed(data, stat):
            with lock:
                values[key] = "" if data is None else data.decode()
                for f in users[key]:
                    render(f)

        zk.DataWatch(key, changed)

    zk = KazooClient(hosts=cfg["hosts"])
    zk.start()
    signal.signal(signal.SIGTERM, lambda *_: None)  # pause() returns once it has run
    for key in users:
        watch(key)
    signal.pause()
    zk.stop()
    zk.close()


if __name__ == "__main__":
    main()
