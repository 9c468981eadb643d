"""RFC 7512 ``pkcs11:`` URIs naming a key: parsed and printed in this one place.

``pkcs11:token=broker;object=client-2026;id=%01;type=private?pin-source=file:/run/secrets/pin``

Path attributes (RFC 7512 section 2.3): ``token``, ``object``, ``id``, ``type`` (must be
``private`` when given). Query attributes: ``module-path``, ``pin-source`` (``file:/path``,
``file:///path`` or a plain absolute path) and ``pin-value``. Other standard identification
attributes (``manufacturer``, ``serial``, ``slot-id``, ...) are rejected rather than silently
ignored, because the broker finds tokens by label only; vendor attributes (``x-...``) are ignored
as section 2.3 allows. A URI is always printed without ``pin-value``; errors name the bad part
but never echo a PIN.
"""

from __future__ import annotations

import os
import stat
import string
from dataclasses import dataclass, field
from pathlib import Path

from broker.errors import ConfigError, InsecurePinFile, InvalidKeyUri

SCHEME = "pkcs11:"

_PATH_ATTRS = frozenset({"token", "object", "id", "type"})
_QUERY_ATTRS = frozenset({"module-path", "pin-source", "pin-value", "module-name"})
_UNSUPPORTED_PATH = frozenset(
    {
        "manufacturer",
        "model",
        "serial",
        "library-manufacturer",
        "library-description",
        "library-version",
        "slot-description",
        "slot-manufacturer",
        "slot-id",
    }
)
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
# RFC 7512 pk11-path-res-avail / pk11-query-res-avail, minus the separators of each part.
_PATH_CHARS = _UNRESERVED | frozenset(":[]@!$'()*+,=&")
_QUERY_CHARS = _UNRESERVED | frozenset(":[]@!$'()*+,=/?|;")
_PRINT_SAFE_PATH = _UNRESERVED | frozenset(":[]@!$'()*+,")
_PRINT_SAFE_QUERY = _UNRESERVED | frozenset(":[]@!$'()*+,/")
_MAX_URI = 4096


@dataclass(frozen=True)
class KeyRef:
    """A key (or just a token) named by an RFC 7512 URI. ``str()`` never shows the PIN."""

    token: str
    object: str | None = None
    id: bytes | None = None
    module_path: str | None = None
    pin_source: str | None = None
    pin_value: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return self.to_uri()

    def to_uri(self) -> str:
        """The URI with ``type=private`` when it names a key; never with ``pin-value``."""
        path = [f"token={_quote(self.token.encode('utf-8'), _PRINT_SAFE_PATH)}"]
        if self.object is not None:
            path.append(f"object={_quote(self.object.encode('utf-8'), _PRINT_SAFE_PATH)}")
        if self.id is not None:
            path.append("id=" + "".join(f"%{b:02X}" for b in self.id))
        if self.object is not None or self.id is not None:
            path.append("type=private")
        query = []
        if self.module_path is not None:
            query.append(f"module-path={_quote(self.module_path.encode(), _PRINT_SAFE_QUERY)}")
        if self.pin_source is not None:
            query.append(f"pin-source={_quote(self.pin_source.encode(), _PRINT_SAFE_QUERY)}")
        text = SCHEME + ";".join(path)
        return text + ("?" + "&".join(query) if query else "")

    def pin_path(self) -> Path | None:
        """The file named by ``pin-source`` (``file:`` scheme or plain path), if any."""
        if self.pin_source is None:
            return None
        return Path(_pin_source_path(self.pin_source))

    def read_pin(self) -> str:
        """The PIN from ``pin-source`` (trailing newline stripped) or else ``pin-value``.

        Raises :class:`broker.errors.ConfigError` naming the file (never its content) when the
        file is missing, unreadable, not UTF-8 or empty, or when the URI carries no PIN at all.
        """
        path = self.pin_path()
        if path is None:
            if self.pin_value is not None:
                return self.pin_value
            raise ConfigError(f"key URI {self} has neither pin-source nor pin-value")
        return read_pin_file(path)


def check_pin_file(path: Path) -> None:
    """Refuse a PIN file that group or others may read or write, or that is not a regular file.

    As ssh does with private keys: the mode of the file itself (a symlink is followed; its
    target is what is checked) must grant nothing to group or others. Raises
    :class:`broker.errors.InsecurePinFile` (mode) or :class:`broker.errors.ConfigError` (missing,
    not a regular file); messages name the path and mode, never the content.
    """
    try:
        info = os.stat(path)
    except OSError as exc:
        raise _open_error(path, exc) from None
    _check_pin_stat(path, info)


def _open_error(path: Path, exc: OSError) -> ConfigError:
    if isinstance(exc, FileNotFoundError):
        return ConfigError(f"PIN file {path} does not exist")
    return ConfigError(f"PIN file {path} is unreadable ({exc.strerror})")


def _check_pin_stat(path: Path, info: os.stat_result) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"PIN file {path} is a directory")
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"PIN file {path} is not a regular file")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise InsecurePinFile(
            f"PIN file {path} has mode {mode:04o}; it must not be accessible by group or "
            "others (chmod 600)"
        )


_MAX_PIN_FILE = 4096


def read_pin_file(path: Path) -> str:
    """A PIN from a file (trailing newline stripped); the error names the file, never the PIN.

    Every PIN the broker reads comes through here. The file is opened first and its mode
    checked on the open descriptor (no window between check and read); ``O_NONBLOCK`` keeps a
    FIFO from hanging the open before it is refused as not a regular file.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _open_error(path, exc) from None
    try:
        _check_pin_stat(path, os.fstat(fd))
        try:
            raw = os.read(fd, _MAX_PIN_FILE + 1)
        except OSError as exc:
            raise ConfigError(f"PIN file {path} is unreadable ({exc.strerror})") from None
    finally:
        os.close(fd)
    if len(raw) > _MAX_PIN_FILE:
        raise ConfigError(f"PIN file {path} is too large to hold a PIN")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"PIN file {path} is not UTF-8 text") from None
    pin = text.rstrip("\r\n")
    if not pin:
        raise ConfigError(f"PIN file {path} is empty")
    return pin


def _pin_source_path(source: str) -> str:
    if source.startswith("file://"):
        rest = source[len("file://") :]
        if not rest.startswith("/"):
            raise InvalidKeyUri("pin-source file URI must have an empty host (file:///path)")
        return rest
    if source.startswith("file:"):
        return source[len("file:") :]
    return source


def _quote(data: bytes, safe: frozenset[str]) -> str:
    return "".join(chr(b) if chr(b) in safe else f"%{b:02X}" for b in data)


def _unquote(value: str, allowed: frozenset[str], where: str) -> bytes:
    out = bytearray()
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "%":
            pair = value[i + 1 : i + 3]
            if len(pair) != 2 or any(c not in string.hexdigits for c in pair):
                raise InvalidKeyUri(f"bad percent-encoding in {where}")
            out.append(int(pair, 16))
            i += 3
            continue
        if ch not in allowed:
            raise InvalidKeyUri(f"character {ch!r} must be percent-encoded in {where}")
        out.append(ord(ch))
        i += 1
    return bytes(out)


def _text(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidKeyUri(f"{where} is not UTF-8 after percent-decoding") from None


def _split_attrs(part: str, sep: str, allowed: frozenset[str], kind: str) -> dict[str, bytes]:
    attrs: dict[str, bytes] = {}
    if not part:
        return attrs
    for item in part.split(sep):
        if not item:
            raise InvalidKeyUri(f"empty {kind} attribute (stray {sep!r})")
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise InvalidKeyUri(f"{kind} attribute {name[:40]!r} has no '=value'")
        if any(c not in _UNRESERVED for c in name):
            raise InvalidKeyUri(f"{kind} attribute name {name[:40]!r} is malformed")
        if name in attrs:
            raise InvalidKeyUri(f"{kind} attribute {name!r} appears twice")
        where = f"{kind} attribute {name!r}"
        if name == "pin-value":
            try:
                attrs[name] = _unquote(value, allowed, where)
            except InvalidKeyUri:
                # Never echo any part of a PIN, not even the offending character.
                raise InvalidKeyUri(f"{where} is not correctly percent-encoded") from None
        else:
            attrs[name] = _unquote(value, allowed, where)
    return attrs


def parse_key_uri(text: str) -> KeyRef:
    """Parse an RFC 7512 URI into a :class:`KeyRef`; :class:`InvalidKeyUri` names the bad part."""
    if not isinstance(text, str):
        raise InvalidKeyUri("a key URI must be a string")
    if len(text) > _MAX_URI:
        raise InvalidKeyUri(f"key URI is longer than {_MAX_URI} characters")
    if text[: len(SCHEME)].lower() != SCHEME:
        raise InvalidKeyUri("key URI must start with 'pkcs11:'")
    body = text[len(SCHEME) :]
    if "#" in body:
        raise InvalidKeyUri("key URI must not have a fragment ('#')")
    path_part, _, query_part = body.partition("?")
    path = _split_attrs(path_part, ";", _PATH_CHARS, "path")
    query = _split_attrs(query_part, "&", _QUERY_CHARS, "query")

    for name in path:
        if name in _UNSUPPORTED_PATH:
            raise InvalidKeyUri(
                f"path attribute {name!r} is not supported: the broker selects tokens by label"
            )
        if name not in _PATH_ATTRS and not name.startswith("x-"):
            raise InvalidKeyUri(f"unknown path attribute {name!r}")
    for name in query:
        if name not in _QUERY_ATTRS and not name.startswith("x-"):
            raise InvalidKeyUri(f"unknown query attribute {name!r}")
    if "module-name" in query:
        raise InvalidKeyUri("query attribute 'module-name' is not supported; use module-path")

    if "token" not in path:
        raise InvalidKeyUri("path attribute 'token' is required (tokens are found by label)")
    token = _text(path["token"], "path attribute 'token'")
    if not token:
        raise InvalidKeyUri("path attribute 'token' is empty")
    if len(token.encode("utf-8")) > 32:
        raise InvalidKeyUri("path attribute 'token' is longer than 32 bytes (CK_TOKEN_INFO label)")
    obj = None
    if "object" in path:
        obj = _text(path["object"], "path attribute 'object'")
        if not obj:
            raise InvalidKeyUri("path attribute 'object' is empty")
    key_id = path.get("id")
    if key_id is not None and not key_id:
        raise InvalidKeyUri("path attribute 'id' is empty")
    if "type" in path:
        kind = _text(path["type"], "path attribute 'type'")
        if kind != "private":
            raise InvalidKeyUri(f"path attribute 'type' must be 'private', not {kind[:20]!r}")

    module_path = None
    if "module-path" in query:
        module_path = _text(query["module-path"], "query attribute 'module-path'")
        if not module_path.startswith("/"):
            raise InvalidKeyUri("query attribute 'module-path' must be an absolute path")
    pin_source = None
    if "pin-source" in query:
        pin_source = _text(query["pin-source"], "query attribute 'pin-source'")
        if not _pin_source_path(pin_source).startswith("/"):
            raise InvalidKeyUri("query attribute 'pin-source' must name an absolute file path")
    pin_value = None
    if "pin-value" in query:
        if pin_source is not None:
            raise InvalidKeyUri("give either pin-source or pin-value, not both")
        pin_value = _text(query["pin-value"], "query attribute 'pin-value'")
    return KeyRef(
        token=token,
        object=obj,
        id=key_id,
        module_path=module_path,
        pin_source=pin_source,
        pin_value=pin_value,
    )
