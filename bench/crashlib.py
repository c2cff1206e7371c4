"""Shared pieces of the crash campaigns (bench/crash-replies, bench/crash-bulk): a daemon under a
work directory, started and `kill -9`ed by its pid, and the admin API over its Unix socket.

Standard library only. Nothing here kills anything but the pids it started.
"""
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


_T0 = time.monotonic()


def log(*a):
    """A line with the seconds since the campaign started."""
    print(f"[{time.monotonic() - _T0:6.1f} s]", *a, flush=True)


def binary():
    """INVITED_BIN, or a release build of this tree (built here)."""
    b = os.environ.get("INVITED_BIN")
    if b:
        return os.path.abspath(b)
    subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True)
    return os.path.join(ROOT, "target/release/invited")


class Deadline:
    """The whole campaign's time limit: every wait checks it, and the campaign fails past it."""

    def __init__(self, seconds):
        self.end = time.monotonic() + seconds
        self.seconds = seconds

    def left(self):
        return self.end - time.monotonic()

    def check(self, what):
        if self.left() <= 0:
            raise Failure(f"time limit of {self.seconds:.0f} s reached while {what}")


class Failure(Exception):
    pass


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path, timeout=60):
        super().__init__("invited", timeout=timeout)
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.path)
        self.sock = s


class Admin:
    """A kept-alive client of the admin API (reconnects once on a broken connection)."""

    def __init__(self, sock):
        self.sock = sock
        self.conn = None

    def call(self, method, path, body=None, timeout=60):
        data = None if body is None else json.dumps(body).encode()
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = UnixHTTP(self.sock, timeout)
            try:
                self.conn.request(method, path, body=data,
                                  headers={"content-type": "application/json"} if data else {})
                r = self.conn.getresponse()
                raw = r.read()
                return r.status, (json.loads(raw) if raw else None)
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise

    def close(self):
        if self.conn:
            self.conn.close()
            self.conn = None


class Daemon:
    """`invited serve` with a config in `dir`; started, stopped and killed by its own pid."""

    def __init__(self, binary, dir, config_text):
        self.bin = binary
        self.dir = dir
        os.makedirs(dir, exist_ok=True)
        self.config = os.path.join(dir, "invited.toml")
        with open(self.config, "w") as f:
            f.write(config_text)
        self.sock = os.path.join(dir, "admin.sock")
        self.proc = None
        self.starts = 0

    def start(self, deadline, timeout=60):
        """Starts the daemon and waits until its admin API answers; returns the seconds that took.
        A daemon that exits or does not answer in time is a failure (the store did not open)."""
        assert self.proc is None
        logf = open(os.path.join(self.dir, "daemon.log"), "ab")
        t0 = time.monotonic()
        self.proc = subprocess.Popen([self.bin, "serve", "--config", self.config],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=logf)
        logf.close()
        self.starts += 1
        admin = Admin(self.sock)
        try:
            while True:
                if self.proc.poll() is not None:
                    raise Failure(f"daemon exited at start {self.starts} with {self.proc.returncode}: "
                                  f"{self.log_tail()}")
                if time.monotonic() - t0 > timeout or deadline.left() <= 0:
                    raise Failure(f"daemon not ready {timeout} s after start {self.starts}: {self.log_tail()}")
                try:
                    st, _ = admin.call("GET", "/v1/status", timeout=5)
                    if st == 200:
                        return time.monotonic() - t0
                except OSError:
                    pass
                time.sleep(0.02)
        finally:
            admin.close()

    def kill9(self):
        """SIGKILL to the daemon's own pid, and reaped."""
        if self.proc is None:
            return
        try:
            os.kill(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.proc = None

    def stop(self, timeout=30):
        """SIGTERM (graceful), SIGKILL after `timeout`."""
        if self.proc is None:
            return
        try:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            self.kill9()
        self.proc = None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def cli(self, *args, timeout=300, check=True):
        r = subprocess.run([self.bin, "--config", self.config, *args], capture_output=True,
                           timeout=timeout)
        if check and r.returncode != 0:
            raise Failure(f"invited {' '.join(args)}: exit {r.returncode}: {r.stderr.decode()[-2000:]}")
        return r

    def cli_json(self, *args, timeout=300):
        return json.loads(self.cli("--json", *args, timeout=timeout).stdout)

    def log_tail(self, n=3000):
        try:
            with open(os.path.join(self.dir, "daemon.log"), "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return ""


def config(dir, outbound, inbound):
    return f"""
[store]
path = "{dir}/store"
[http]
listen = "127.0.0.1:0"
public_url = "http://links.invited.test"
[admin]
socket = "{dir}/admin.sock"
[keys]
active = "k1"
files = {{ k1 = "{dir}/k1.key" }}
[mail]
from = "Contoso Distribution <partners@invited.test>"
reply_to = "replies@invited.test"
default_locale = "en-US"
[mail.outbound]
{outbound}
[mail.inbound]
{inbound}
trusted_authserv_id = "mx.invited.test"
[policy]
invitation_ttl = "14d"
verification_ttl = "7d"
reminder_after = "10d"
[[providers]]
id = "contoso-kr"
name = "Contoso Distribution Korea"
email = "ops@contoso.test"
markets = ["KR"]
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rng():
    seed = int(os.environ.get("SEED") or random.SystemRandom().randrange(1 << 31))
    log(f"random seed {seed} (SEED={seed} repeats the kill moments)")
    return random.Random(seed)


def main_guard(run):
    """Runs `run()`; prints FAILED and exits 1 on a Failure."""
    try:
        ok = run()
    except Failure as e:
        log(f"FAILED: {e}")
        sys.exit(1)
    sys.exit(0 if ok else 1)
