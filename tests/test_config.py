import pwd
from pathlib import Path

import pytest

from gateway import config_files
from gateway.cli import main
from gateway.config import ConfigError, load_config, parse_config
from tests.certs import CertificateAuthority

REPO = Path(__file__).resolve().parents[1]


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "gw.yaml")
    return info.value.problems


def test_shipped_config_is_valid_and_matches_the_defaults() -> None:
    shipped = load_config(REPO / "config" / "gateway.yaml")
    defaults = parse_config("")
    assert shipped.model_dump(exclude={"gateway_id", "broker"}) == defaults.model_dump(exclude={"gateway_id", "broker"})


def test_every_problem_names_file_line_and_key() -> None:
    text = "gateway_id: gw-1\npolicy:\n  borderline_band: 0.9\n  max_consecutive_recaptures: -1\nbroker:\n  url: http://x\n"
    got = problems(text)
    assert len(got) == 3
    assert got[0].startswith("gw.yaml:3: policy.borderline_band:")
    assert got[1].startswith("gw.yaml:4: policy.max_consecutive_recaptures:")
    assert got[2].startswith("gw.yaml:6: broker.url:") and "mqtt://" in got[2]


def test_unknown_keys_are_errors() -> None:
    assert problems("policy:\n  sharp_treshold: 0.4\n") == ["gw.yaml:2: policy.sharp_treshold: unknown key"]
    assert problems("colour: red\n") == ["gw.yaml:1: colour: unknown key"]


def test_yaml_syntax_and_shape_errors() -> None:
    [syntax] = problems("policy:\n  a: [1, 2\n")
    assert syntax.startswith("gw.yaml:") and "YAML syntax" in syntax
    assert problems("- a\n- b\n") == ["gw.yaml:1: the top level must be a mapping of keys"]


def test_topic_prefix_and_gateway_id_are_checked() -> None:
    assert "topic_prefix" in problems("topic_prefix: 'a/#'\n")[0]
    assert "gateway_id" in problems("gateway_id: 'has space'\n")[0]


def test_client_id_defaults_from_gateway_id() -> None:
    assert parse_config("gateway_id: gw-7\n").broker.client_id == "colposcopy-gateway-gw-7"


def test_broker_override_wins() -> None:
    config = parse_config(
        "broker:\n  url: mqtt://a:1\n  keepalive_s: 60\n", overrides={"broker": {"url": "mqtts://b:8883"}}
    )
    assert (config.broker.host, config.broker.port, config.broker.tls, config.broker.keepalive_s) == (
        "b",
        8883,
        True,
        60,
    )


def test_password_comes_from_a_file_or_a_systemd_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    config = parse_config(f"broker:\n  username: gw\n  password_file: {secret}\n")
    monkeypatch.delenv("COLPO_GATEWAY_MQTT_PASSWORD", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert config.broker.password() == "s3cret"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text("from-systemd")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert config.broker.password() == "from-systemd"


def test_config_validate_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("processing:\n  workers: 2\n  queue_size: 0\n")
    assert main(["config", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:3: processing.queue_size:" in err
    assert main(["config", "validate", str(REPO / "config" / "gateway.yaml")]) == 0
    assert "valid" in capsys.readouterr().out


def test_a_photo_limit_over_the_memory_budget_is_refused() -> None:
    text = "decode:\n  max_decoded_bytes: 200000000\n  memory_budget_bytes: 100000000\n"
    (problem,) = problems(text)
    assert problem.startswith("gw.yaml:3: decode.memory_budget_bytes:") and "decode.max_decoded_bytes" in problem


def test_a_duplicated_key_is_an_error_naming_both_lines() -> None:
    text = "broker:\n  url: mqtt://a:1\n  username: gw\npolicy:\n  sharp_threshold: 0.4\nbroker:\n  url: mqtt://b:1\n"
    assert problems(text) == ["gw.yaml:6: broker: duplicate key, also at line 1 (the last one wins)"]
    nested = "policy:\n  sharp_threshold: 0.4\n  borderline_band: 0.1\n  sharp_threshold: 0.6\n"
    assert problems(nested) == ["gw.yaml:4: policy.sharp_threshold: duplicate key, also at line 2 (the last one wins)"]


def test_a_password_in_the_yaml_says_where_it_goes() -> None:
    [problem] = problems("broker:\n  username: gw\n  password: s3cret\n")
    assert problem.startswith("gw.yaml:3: broker.password: unknown key: the password never goes in this file")
    assert "credential mqtt-password" in problem and "COLPO_GATEWAY_MQTT_PASSWORD" in problem
    assert "broker.password_file" in problem and "s3cret" not in problem


@pytest.fixture
def as_this_user(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check files for this process's user, even as root on a box where the unit's user exists."""
    monkeypatch.setattr(config_files, "SERVICE_USER", "no-such-user-here")


def test_validate_checks_the_files_the_config_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], as_this_user: None
) -> None:
    ca = CertificateAuthority.create(tmp_path / "pki")
    client = ca.issue("gw", "colposcopy-gateway")
    combined = tmp_path / "both.pem"
    combined.write_text(client.cert.read_text() + client.key.read_text())
    manifest = REPO / "engines" / "manifest.yaml"
    file = tmp_path / "gw.yaml"

    def validate(broker: str, models: str = f"models: {{manifest: '{manifest}'}}\n") -> tuple[int, str, str]:
        file.write_text(f"gateway_id: gw-1\nbroker:\n{broker}{models}")
        code = main(["config", "validate", str(file)])
        out, err = capsys.readouterr()
        return code, out, err

    code, _out, err = validate(
        f"  url: mqtts://b:8883\n  ca_file: {tmp_path / 'nope.crt'}\n  password_file: {tmp_path / 'pw'}\n"
    )
    assert code == 2
    assert f"{file}:4: broker.ca_file: {tmp_path / 'nope.crt'} does not exist" in err
    assert f"{file}:5: broker.password_file: {tmp_path / 'pw'} does not exist" in err
    code, _out, err = validate(f"  url: mqtts://b:8883\n  cert_file: {client.cert}\n")
    assert code == 2 and f"{file}:4: broker.cert_file: {client.cert} holds no private key: set broker.key_file" in err
    code, _out, err = validate(f"  url: mqtts://b:8883\n  key_file: {client.key}\n")
    assert code == 2 and f"{file}:4: broker.key_file: set without broker.cert_file" in err
    code, out, _err = validate(f"  url: mqtts://b:8883\n  ca_file: {ca.cert}\n  cert_file: {combined}\n")
    assert code == 0 and "valid" in out and "warning" not in out  # one PEM with the certificate and its key
    code, out, _err = validate("  url: mqtt://b:1883\n", f"models:\n  manifest: {tmp_path / 'none.yaml'}\n")
    assert code == 0
    assert f"warning: {file}:5: models.manifest: no model manifest at {tmp_path / 'none.yaml'}: the gateway" in out
    assert "reports degraded" in out


def test_readable_means_readable_by_the_services_user(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    secret = tmp_path / "secret"
    secret.write_text("x")
    secret.chmod(0o600)
    assert config_files.unreadable(secret, nobody) is not None and "nobody" in str(
        config_files.unreadable(secret, nobody)
    )
    assert config_files.unreadable(Path("/etc/passwd"), nobody) is None
    assert config_files.unreadable(tmp_path / "absent", nobody) == "does not exist"
    assert config_files.unreadable(tmp_path, nobody) == "is not a file"
