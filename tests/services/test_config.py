"""Every setting is a flag and a FERRY_* variable; flags win, then the environment, then the default."""

import argparse
from pathlib import Path

import pytest

from ferry.services.config import DownloaderConfig, ServerConfig, add_arguments, from_arguments


def parse(config_type, *argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser, config_type)
    return from_arguments(config_type, parser.parse_args(list(argv)))


def test_defaults_bind_loopback_and_refuse_private_networks(monkeypatch):
    monkeypatch.delenv("FERRY_HOST", raising=False)
    monkeypatch.delenv("FERRY_ALLOW_PRIVATE_NETWORKS", raising=False)
    assert parse(ServerConfig).host == "127.0.0.1"
    assert parse(DownloaderConfig).allow_private_networks is False


def test_environment_fills_unset_flags(monkeypatch):
    monkeypatch.setenv("FERRY_GRPC_PORT", "6001")
    monkeypatch.setenv("FERRY_DATA_DIR", "/srv/ferry")
    monkeypatch.setenv("FERRY_ALLOW_PRIVATE_NETWORKS", "true")
    config = parse(ServerConfig)
    assert config.grpc_port == 6001 and config.data_dir == Path("/srv/ferry")
    assert parse(DownloaderConfig).allow_private_networks is True


def test_flags_win_over_environment(monkeypatch):
    monkeypatch.setenv("FERRY_GRPC_PORT", "6001")
    assert parse(ServerConfig, "--grpc-port", "7001").grpc_port == 7001


def test_a_malformed_boolean_is_an_error_not_a_guess(monkeypatch):
    monkeypatch.setenv("FERRY_ALLOW_PRIVATE_NETWORKS", "maybe")
    with pytest.raises(ValueError, match="FERRY_ALLOW_PRIVATE_NETWORKS"):
        parse(DownloaderConfig)


def test_tls_needs_both_certificate_and_key():
    with pytest.raises(ValueError, match="--tls-cert and --tls-key"):
        parse(ServerConfig, "--tls-cert", "/tmp/cert.pem")


def test_repeatable_settings_take_flags_in_order_or_comma_separated_environment(monkeypatch):
    from dataclasses import dataclass

    from ferry.services.config import setting

    @dataclass(frozen=True)
    class Chain:
        storage: tuple[str, ...] = setting("backends in fallback order", ("local",))

    monkeypatch.delenv("FERRY_STORAGE", raising=False)
    assert parse(Chain).storage == ("local",)
    assert parse(Chain, "--storage", "s3://b/p", "--storage", "local").storage == ("s3://b/p", "local")
    monkeypatch.setenv("FERRY_STORAGE", "s3://b/p, local")
    assert parse(Chain).storage == ("s3://b/p", "local")
