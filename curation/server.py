"""Run Label Studio (1.23.2, from its own virtual environment) on 127.0.0.1.

A server *home* folder (``--home``; default ``$BIOMEDICA_LABELSTUDIO_HOME`` or
``build/labelstudio`` under the current folder) holds everything of one server::

    data/          Label Studio's data dir (SQLite database, media, its own SECRET_KEY)
    secret.json    the admin's e-mail, password and API token (mode 0600; never printed)
    server.json    pid, port, url, files root, log, start time of the running server
    server.log     the server's output
    home/          HOME of the server process (Label Studio writes ~/.local/share there)

What :func:`start` takes care of, each measured on Label Studio 1.23.2:

- **Listen address**: ``--internal-host 127.0.0.1`` (``--host`` only shapes URLs).
- **Busy port**: Label Studio silently moves to port+1; :func:`start` refuses a busy port
  before starting (:class:`PortBusy`) and checks the port the server reports it bound.
- **Environment**: its settings read ``HOST``, ``PORT``, ``USERNAME``, ``PASSWORD``,
  ``DEBUG`` ... with and without a ``LABEL_STUDIO_`` prefix, so the server gets a fresh
  environment (:func:`server_env`): a few harmless variables of ours, nothing else.
- **Network**: ``LATEST_VERSION_CHECK=false``, ``COLLECT_ANALYTICS=false``, empty
  ``SENTRY_DSN`` and ``FRONTEND_SENTRY_DSN``, ``CONVERTER_DOWNLOAD_RESOURCES=false``.
- **Migrations**: a first start migrates the database (25 s to minutes); a copy of a migrated
  data dir starts in seconds. :func:`ensure_template` migrates once into
  ``<venv>/template-data`` (``scripts/labelstudio_venv.sh`` does it at install) and every new
  data dir is a copy of it without its ``.env`` (each server makes its own SECRET_KEY).
- **Admin and token**: the admin user is created on the first start with a generated
  password and a 40-hex legacy API token (``LABEL_STUDIO_USER_TOKEN``; legacy tokens are
  enabled for the organisation with ``LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN``), stored in
  ``secret.json`` with mode 0600, or taken from ``BIOMEDICA_LABELSTUDIO_EMAIL``,
  ``BIOMEDICA_LABELSTUDIO_PASSWORD`` and ``BIOMEDICA_LABELSTUDIO_TOKEN``. Credentials travel
  in the server's environment, never on its command line (``ps`` shows that to every user).
  Personal access tokens (JWT) work too: see :mod:`curation.client`.
- **Local files**: ``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true`` with the document root
  ``files_root`` (default: the current folder); :mod:`curation.push` adds one local-files
  storage per project whose path prefixes the media it references.
- **Sign-up** only through the organisation's invite link
  (``LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK=true``): :func:`add_user` uses it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path

from biomedica_kit.base.atomic import atomic_path, atomic_write_bytes

__all__ = ["DEFAULT_PORT", "LABEL_STUDIO_VERSION", "Admin", "LabelStudioError", "PortBusy",
           "ServerInfo", "ServerStatus", "add_user", "admin_credentials", "default_home",
           "ensure_template", "kill", "labelstudio_venv", "log_tail", "port_free", "redact",
           "server_env", "start", "status", "stop"]

LABEL_STUDIO_VERSION = "1.23.2"
DEFAULT_PORT = 8080
ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = "template-data"
SECRET_FILE = "secret.json"
SERVER_FILE = "server.json"
LOG_FILE = "server.log"
_BOUND = re.compile(r"Starting development server at https?://[^:/\s]+:(\d+)/")
#: Variables a server inherits (locale and time zone); everything else is dropped.
_INHERITED = ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")


class LabelStudioError(RuntimeError):
    """Label Studio could not be started, reached or stopped (the message says why)."""


class PortBusy(LabelStudioError):
    """The port is taken (Label Studio would silently move to the next one)."""


@dataclass(frozen=True)
class Admin:
    """The admin user of a server home. ``source``: ``secret file`` or ``environment``."""

    email: str
    password: str
    token: str
    source: str

    def __repr__(self) -> str:  # never show the secrets, not even in a traceback
        return f"Admin(email={self.email!r}, token={redact(self.token)}, source={self.source!r})"


@dataclass(frozen=True)
class ServerInfo:
    """A started server, as recorded in ``server.json``."""

    url: str
    port: int
    pid: int
    home: str
    data_dir: str
    files_root: str
    log: str
    started: str
    startup_seconds: float


@dataclass(frozen=True)
class ServerStatus:
    """What :func:`status` found."""

    home: str
    running: bool
    healthy: bool
    info: ServerInfo | None
    admin_email: str | None
    token: str | None  # redacted unless asked for

    def format_lines(self) -> list[str]:
        """The status as the CLI prints it."""
        lines = [f"home     {self.home}"]
        if self.info is None or not self.running:
            return lines + ["state    stopped"]
        return lines + [
            f"state    {'running, healthy' if self.healthy else 'running, not answering'}",
            f"url      {self.info.url}", f"pid      {self.info.pid}",
            f"data     {self.info.data_dir}", f"files    {self.info.files_root}",
            f"log      {self.info.log}", f"since    {self.info.started}",
            f"admin    {self.admin_email}", f"token    {self.token}"]


def redact(token: str | None) -> str:
    """A token shown as its length only."""
    return "<none>" if not token else f"<redacted, {len(token)} characters>"


def default_home() -> Path:
    """``$BIOMEDICA_LABELSTUDIO_HOME``, else ``build/labelstudio`` under the current folder."""
    env = os.environ.get("BIOMEDICA_LABELSTUDIO_HOME")
    return Path(env) if env else Path.cwd() / "build" / "labelstudio"


def labelstudio_venv() -> Path:
    """The virtual environment holding Label Studio (``$BIOMEDICA_LABELSTUDIO_VENV``, else
    ``.venv-labelstudio`` at the repository root, made by ``scripts/labelstudio_venv.sh``)."""
    env = os.environ.get("BIOMEDICA_LABELSTUDIO_VENV")
    # Absolute: the server and its migrations run with their own working directory.
    return Path(env).resolve() if env else ROOT / ".venv-labelstudio"


def _executable(venv: Path) -> Path:
    exe = venv / "bin" / "label-studio"
    if not exe.is_file():
        raise LabelStudioError(f"no Label Studio at {exe}: run `bash scripts/labelstudio_venv.sh`"
                               f" (make test does) to create its virtual environment")
    return exe


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` atomically to a file only its owner can read (mode 0600)."""
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)


def admin_credentials(home: str | os.PathLike[str] | None = None, *,
                      create: bool = False) -> Admin:
    """The admin of ``home``: from the environment (``BIOMEDICA_LABELSTUDIO_EMAIL``,
    ``_PASSWORD``, ``_TOKEN``), else ``secret.json`` (made, mode 0600, when ``create``)."""
    env = {k: os.environ.get(f"BIOMEDICA_LABELSTUDIO_{k.upper()}") for k in
           ("email", "password", "token")}
    if env["token"]:
        return Admin(env["email"] or "admin@biomedica.local", env["password"] or "",
                     env["token"], "environment")
    path = Path(home or default_home()) / SECRET_FILE
    if path.is_file():
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        data = json.loads(path.read_text())
        return Admin(data["email"], data["password"], data["token"], "secret file")
    if not create:
        raise LabelStudioError(f"no admin token: {path} does not exist (start the server "
                               f"once, or set BIOMEDICA_LABELSTUDIO_TOKEN / LABEL_STUDIO_API_KEY)")
    admin = Admin("admin@biomedica.local", secrets.token_urlsafe(18), secrets.token_hex(20),
                  "secret file")
    _write_private(path, json.dumps({"email": admin.email, "password": admin.password,
                                     "token": admin.token}).encode())
    return admin


def server_env(home: Path, venv: Path, files_root: Path, admin: Admin) -> dict[str, str]:
    """The whole environment of a server process: nothing inherited but locale and time zone
    (stray ``HOST``/``PORT``/``USERNAME``/``PASSWORD``... would reach its settings)."""
    env = {k: os.environ[k] for k in _INHERITED if k in os.environ}
    env.update({
        "PATH": f"{venv / 'bin'}{os.pathsep}/usr/local/bin{os.pathsep}/usr/bin{os.pathsep}/bin",
        "HOME": str(home / "home"), "PYTHONUNBUFFERED": "1",
        "LATEST_VERSION_CHECK": "false", "COLLECT_ANALYTICS": "false", "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "", "CONVERTER_DOWNLOAD_RESOURCES": "false",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(files_root),
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_USERNAME": admin.email, "LABEL_STUDIO_USER_TOKEN": admin.token,
    })
    if admin.password:
        env["LABEL_STUDIO_PASSWORD"] = admin.password
    return env


def ensure_template(venv: Path | None = None, *, timeout: float = 900.0) -> Path:
    """A migrated, empty data dir to copy new data dirs from (made once: minutes)."""
    venv = venv or labelstudio_venv()
    template = venv / TEMPLATE
    if (template / "label_studio.sqlite3").is_file():
        return template
    exe = _executable(venv)
    work = venv / f".tmp-{TEMPLATE}.{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = server_env(work, venv, work, Admin("", "", "", "template"))
    for k in ("LABEL_STUDIO_USERNAME", "LABEL_STUDIO_USER_TOKEN"):
        env.pop(k)
    out = subprocess.run([str(exe), "version", "--data-dir", str(work / "data")], env=env,
                         cwd=work, capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode != 0 or not (work / "data" / "label_studio.sqlite3").is_file():
        shutil.rmtree(work, ignore_errors=True)
        raise LabelStudioError(f"migrating a template data dir failed:\n{out.stdout[-3000:]}"
                               f"\n{out.stderr[-3000:]}")
    (work / "data" / ".env").unlink(missing_ok=True)
    try:
        os.replace(work / "data", template)
    except OSError:  # another process made it first
        if not (template / "label_studio.sqlite3").is_file():
            raise
    shutil.rmtree(work, ignore_errors=True)
    return template


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``host:port`` now: nothing answers there and it binds
    with ``SO_REUSEADDR`` as Django's server binds (connections of a killed server that
    linger in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        if s.connect_ex((host, port)) == 0:
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def log_tail(home: str | os.PathLike[str] | None = None, chars: int = 4000) -> str:
    """The end of the server log (tokens never reach it: they travel in the environment)."""
    path = Path(home or default_home()) / LOG_FILE
    if not path.is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - chars))
        return f.read().decode("utf-8", "replace")


def _alive(pid: int, data_dir: str | None = None) -> bool:
    """Whether ``pid`` is a live (not zombie) Label Studio process of ``data_dir``."""
    with suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own dead child
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace")
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    return "label-studio" in cmdline and (data_dir is None or data_dir in cmdline)


def _read_info(home: Path) -> ServerInfo | None:
    try:
        return ServerInfo(**json.loads((home / SERVER_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _healthy(url: str, timeout: float = 2.0) -> bool:
    import requests

    try:
        r = requests.get(f"{url}/health", timeout=timeout)
        return r.status_code == 200 and r.json().get("status") == "UP"
    except (requests.RequestException, ValueError):
        return False


def _prepare_data_dir(data: Path, venv: Path) -> None:
    if (data / "label_studio.sqlite3").is_file():
        return
    template = ensure_template(venv)
    tmp = data.with_name(f".tmp-{data.name}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(template, tmp, ignore=shutil.ignore_patterns(".env"))
    os.replace(tmp, data)


def start(home: str | os.PathLike[str] | None = None, *, port: int = DEFAULT_PORT,
          files_root: str | os.PathLike[str] | None = None, venv: Path | None = None,
          timeout: float = 300.0) -> ServerInfo:
    """Start a server for ``home`` on 127.0.0.1:``port`` and wait until ``/health`` answers.

    A server of ``home`` that is already running is returned as it is. Raises
    :class:`PortBusy` when the port is taken, :class:`LabelStudioError` (with the log's end)
    when the server dies or does not answer within ``timeout`` seconds.
    """
    home_p = Path(home or default_home()).resolve()
    venv = (venv or labelstudio_venv()).resolve()
    exe = _executable(venv)
    home_p.mkdir(parents=True, exist_ok=True)
    (home_p / "home").mkdir(exist_ok=True)
    running = _read_info(home_p)
    if running and _alive(running.pid, running.data_dir) and _healthy(running.url):
        return running
    if not port_free(port):
        raise PortBusy(f"port {port} on 127.0.0.1 is in use (Label Studio would silently "
                       f"move to {port + 1}); choose another with --port")
    root = Path(files_root or Path.cwd()).resolve()
    data = home_p / "data"
    t0 = time.monotonic()
    _prepare_data_dir(data, venv)
    admin = admin_credentials(home_p, create=True)
    log_path = home_p / LOG_FILE
    with open(log_path, "ab") as log:
        log.write(f"\n== biomedica: starting Label Studio on port {port} "
                  f"({time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())})\n".encode())
        log.flush()
        proc = subprocess.Popen(
            [str(exe), "start", "--data-dir", str(data), "--internal-host", "127.0.0.1",
             "--port", str(port), "--no-browser", "--log-level", "WARNING"],
            env=server_env(home_p, venv, root, admin), cwd=home_p, stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    offset = log_path.stat().st_size
    try:
        _wait_ready(proc, url, port, log_path, offset, t0 + timeout)
    except BaseException:
        _terminate(proc.pid, 10.0)
        raise
    info = ServerInfo(url=url, port=port, pid=proc.pid, home=str(home_p), data_dir=str(data),
                      files_root=str(root), log=str(log_path),
                      started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      startup_seconds=round(time.monotonic() - t0, 2))
    atomic_write_bytes(home_p / SERVER_FILE, json.dumps(asdict(info), indent=2).encode())
    return info


def _wait_ready(proc: subprocess.Popen[bytes], url: str, port: int, log: Path, offset: int,
                deadline: float) -> None:
    bound: int | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabelStudioError(f"Label Studio exited with status {proc.returncode} "
                                   f"before answering; its log:\n{log_tail(log.parent)}")
        if bound is None:
            with open(log, "rb") as f:
                f.seek(offset)
                m = _BOUND.search(f.read().decode("utf-8", "replace"))
            bound = int(m.group(1)) if m else None
            if bound is not None and bound != port:
                raise PortBusy(f"Label Studio bound port {bound} instead of {port} (the port "
                               f"was taken while it started); choose another with --port")
        if bound == port and _healthy(url):
            return
        time.sleep(0.5)
    raise LabelStudioError(f"Label Studio did not answer {url}/health in time; its log:\n"
                           f"{log_tail(log.parent)}")


def _terminate(pid: int, timeout: float, sig: int = signal.SIGTERM) -> None:
    """Signal the server's process group, wait, then kill it."""
    for s in (sig, signal.SIGKILL):
        try:
            os.killpg(pid, s)
        except ProcessLookupError:
            return
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not _alive(pid):
                return
            time.sleep(0.2)


def stop(home: str | os.PathLike[str] | None = None, *, timeout: float = 30.0) -> bool:
    """Stop the server of ``home`` (SIGTERM, then SIGKILL). False when none was running."""
    home_p = Path(home or default_home()).resolve()
    info = _read_info(home_p)
    if info is None:
        return False
    was = _alive(info.pid, info.data_dir)
    if was:
        _terminate(info.pid, timeout)
    (home_p / SERVER_FILE).unlink(missing_ok=True)
    return was


def kill(home: str | os.PathLike[str] | None = None) -> bool:
    """SIGKILL the server of ``home`` at once, as a crash would (``server.json`` is left)."""
    info = _read_info(Path(home or default_home()).resolve())
    if info is None or not _alive(info.pid, info.data_dir):
        return False
    _terminate(info.pid, 10.0, signal.SIGKILL)
    return True


def status(home: str | os.PathLike[str] | None = None, *,
           show_token: bool = False) -> ServerStatus:
    """Whether the server of ``home`` runs and answers; the token redacted unless asked."""
    home_p = Path(home or default_home()).resolve()
    info = _read_info(home_p)
    running = info is not None and _alive(info.pid, info.data_dir)
    try:
        admin: Admin | None = admin_credentials(home_p)
    except LabelStudioError:
        admin = None
    token = None if admin is None else (admin.token if show_token else redact(admin.token))
    return ServerStatus(home=str(home_p), running=running,
                        healthy=bool(running and info and _healthy(info.url)), info=info,
                        admin_email=admin.email if admin else None, token=token)


def add_user(url: str, admin_token: str, email: str, password: str, *,
             personal_token: bool = True) -> str:
    """Sign ``email`` up through the organisation's invite link, as a person would in the UI,
    and return the new user's API token: a personal access token (a JWT refresh token) when
    ``personal_token``, else the legacy token."""
    import requests

    from curation.client import LabelStudioClient

    invite = LabelStudioClient(url, admin_token).get("/api/invite")["invite_url"]
    s = requests.Session()
    signup = f"{url}{invite}"
    s.get(signup, timeout=30).raise_for_status()
    r = s.post(signup, data={"email": email, "password": password,
                             "csrfmiddlewaretoken": s.cookies.get("csrftoken", "")},
               headers={"Referer": signup}, allow_redirects=False, timeout=30)
    if r.status_code != 302:
        raise LabelStudioError(f"signing up {email} failed (HTTP {r.status_code})")
    headers = {"X-CSRFToken": s.cookies.get("csrftoken", ""), "Referer": f"{url}/"}
    r = (s.post(f"{url}/api/token/", headers=headers, timeout=30) if personal_token
         else s.get(f"{url}/api/current-user/token", timeout=30))
    r.raise_for_status()
    return str(r.json()["token"])


if __name__ == "__main__":  # `python -m curation.server template`: migrate the template once
    if sys.argv[1:] != ["template"]:
        sys.exit("usage: python -m curation.server template")
    print(ensure_template())
