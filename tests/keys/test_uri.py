"""RFC 7512 key URIs: parsing and printing against data vectors, PIN hygiene, PIN files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from broker.errors import (
    ConfigError,
    InsecurePinFile,
    InvalidArgument,
    InvalidKeyUri,
    KeyStoreError,
)
from broker.keys.uri import KeyRef, check_pin_file, parse_key_uri, read_pin_file

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent.parent / "data" / "pkcs11_uri_vectors.json").read_text("utf-8")
)


@pytest.mark.parametrize("case", VECTORS["valid"], ids=lambda c: c["uri"][:60])
def test_valid_uri_vectors_parse_and_print(case: dict[str, Any]) -> None:
    ref = parse_key_uri(case["uri"])
    assert ref.token == case["token"]
    assert ref.object == case.get("object")
    assert ref.id == (bytes.fromhex(case["id_hex"]) if "id_hex" in case else None)
    assert ref.module_path == case.get("module_path")
    assert ref.pin_source == case.get("pin_source")
    assert ref.pin_value == case.get("pin_value")
    assert str(ref) == case["printed"]
    assert ref.to_uri() == case["printed"]
    # Printing then parsing gives the same reference, minus any pin-value.
    reparsed = parse_key_uri(ref.to_uri())
    assert reparsed == KeyRef(
        token=ref.token,
        object=ref.object,
        id=ref.id,
        module_path=ref.module_path,
        pin_source=ref.pin_source,
    )


@pytest.mark.parametrize("case", VECTORS["invalid"], ids=lambda c: c["uri"][:60])
def test_invalid_uri_vectors_raise_naming_the_bad_part(case: dict[str, Any]) -> None:
    with pytest.raises(InvalidKeyUri) as info:
        parse_key_uri(case["uri"])
    assert case["error"] in str(info.value)
    # One exception tree: a bad URI is both a key-store error and a caller error.
    assert isinstance(info.value, KeyStoreError)
    assert isinstance(info.value, InvalidArgument)


@pytest.mark.parametrize(
    "uri",
    [
        "pkcs11:token=t?pin-value=hunter2-secret&pin-source=file:/p",
        "pkcs11:token=t?pin-value=hunter2-secret%zz",
        "pkcs11:token=t?pin-value=hunter2-secret%FF",
        "pkcs11:token=t;manufacturer=x?pin-value=hunter2-secret",
        "pkcs11:token=t?pin-value=hunter2-secret&bogus=1",
    ],
)
def test_errors_never_echo_a_pin_value(uri: str) -> None:
    with pytest.raises(InvalidKeyUri) as info:
        parse_key_uri(uri)
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in repr(info.value)


def test_pin_value_is_never_printed_nor_in_repr() -> None:
    ref = parse_key_uri("pkcs11:token=t;object=k?pin-value=hunter2-secret")
    assert ref.pin_value == "hunter2-secret"
    assert ref.read_pin() == "hunter2-secret"
    for text in (str(ref), ref.to_uri(), repr(ref)):
        assert "hunter2" not in text


def test_read_pin_strips_one_trailing_newline_and_keeps_inner_spaces(tmp_path: Path) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text(" 12 34 \n")
    pin_file.chmod(0o600)
    for source in (str(pin_file), f"file:{pin_file}", f"file://{pin_file}"):
        ref = parse_key_uri(f"pkcs11:token=t?pin-source={source}")
        assert ref.pin_path() == pin_file
        assert ref.read_pin() == " 12 34 "


def test_read_pin_missing_file_names_the_path(tmp_path: Path) -> None:
    ref = KeyRef(token="t", pin_source=f"file:{tmp_path}/nope")
    with pytest.raises(ConfigError, match="does not exist") as info:
        ref.read_pin()
    assert str(tmp_path / "nope") in str(info.value)


def test_read_pin_empty_file(tmp_path: Path) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text("\n")
    pin_file.chmod(0o600)
    with pytest.raises(ConfigError, match="is empty"):
        KeyRef(token="t", pin_source=str(pin_file)).read_pin()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_read_pin_unreadable_file_names_path_not_content(tmp_path: Path) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text("hunter2-secret\n")
    pin_file.chmod(0)
    with pytest.raises(ConfigError, match="unreadable") as info:
        KeyRef(token="t", pin_source=str(pin_file)).read_pin()
    assert str(pin_file) in str(info.value)
    assert "hunter2" not in str(info.value)


def test_read_pin_directory_and_binary(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        KeyRef(token="t", pin_source=str(tmp_path)).read_pin()
    pin_file = tmp_path / "pin"
    pin_file.write_bytes(b"\xff\xfe\n")
    pin_file.chmod(0o600)
    with pytest.raises(ConfigError, match="not UTF-8"):
        KeyRef(token="t", pin_source=str(pin_file)).read_pin()


def test_read_pin_without_any_source() -> None:
    with pytest.raises(ConfigError, match="neither pin-source nor pin-value"):
        KeyRef(token="t", object="k").read_pin()


def test_overlong_uri_is_rejected() -> None:
    with pytest.raises(InvalidKeyUri, match="longer than"):
        parse_key_uri("pkcs11:token=t;object=" + "a" * 5000)


def _pin_file(tmp_path: Path, mode: int, name: str = "pin") -> Path:
    path = tmp_path / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("hunter2-secret\n")
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606, 0o620, 0o602, 0o700 | 0o040])
def test_pin_file_open_to_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = _pin_file(tmp_path, mode)
    for check in (
        lambda: read_pin_file(path),
        lambda: KeyRef(token="t", pin_source=f"file:{path}").read_pin(),
        lambda: check_pin_file(path),
    ):
        with pytest.raises(InsecurePinFile) as info:
            check()
        assert str(info.value) == (
            f"PIN file {path} has mode {mode:04o}; it must not be accessible by group or others "
            "(chmod 600)"
        )
        assert info.value.reason == "insecure_pin_file" and not info.value.retryable
        assert "hunter2" not in str(info.value)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_pin_file_private_to_its_owner_is_accepted(tmp_path: Path, mode: int) -> None:
    path = _pin_file(tmp_path, mode)
    check_pin_file(path)
    assert read_pin_file(path) == "hunter2-secret"


def test_pin_file_symlink_to_a_private_file_is_accepted_the_target_is_checked(
    tmp_path: Path,
) -> None:
    target = _pin_file(tmp_path, 0o600)
    link = tmp_path / "link"
    link.symlink_to(target)  # a symlink's own mode (0777) is not what counts
    check_pin_file(link)
    assert read_pin_file(link) == "hunter2-secret"
    target.chmod(0o644)
    with pytest.raises(InsecurePinFile, match="mode 0644"):
        read_pin_file(link)


def test_pin_file_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    for check in (lambda: read_pin_file(fifo), lambda: check_pin_file(fifo)):
        with pytest.raises(ConfigError, match="is not a regular file"):
            check()  # and does not block on the FIFO
    with pytest.raises(ConfigError, match="is a directory"):
        check_pin_file(tmp_path)
