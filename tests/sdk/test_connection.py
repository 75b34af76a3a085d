"""How the SDK finds the stack: explicit arguments, else FERRY_* variables, else the local default."""

from ferry.connection import DEFAULT_ADDRESS, Connection


def test_explicit_address_wins_over_environment(monkeypatch):
    monkeypatch.setenv("FERRY_ADDRESS", "env-host:1")
    assert Connection.resolve("given:2").address == "given:2"


def test_environment_is_used_when_nothing_is_given(monkeypatch, tmp_path):
    ca = tmp_path / "ca.pem"
    monkeypatch.setenv("FERRY_ADDRESS", "env-host:1")
    monkeypatch.setenv("FERRY_TOKEN", "s3cret")
    monkeypatch.setenv("FERRY_CA_FILE", str(ca))
    connection = Connection.resolve()
    assert connection.address == "env-host:1"
    assert connection.metadata == (("authorization", "Bearer s3cret"),)
    assert connection.ca_file == ca and connection.tls


def test_defaults_are_local_plaintext_and_anonymous(monkeypatch):
    for name in ("FERRY_ADDRESS", "FERRY_TOKEN", "FERRY_CA_FILE"):
        monkeypatch.delenv(name, raising=False)
    connection = Connection.resolve()
    assert connection.address == DEFAULT_ADDRESS
    assert connection.metadata == ()
    assert not connection.tls
