"""Settings: read from the environment, fail fast with one line naming the variable."""

from __future__ import annotations

import pytest

from integration.settings import (
    REVOR_DEFAULT_BASE_URL,
    SANDBOX_API_KEY,
    SANDBOX_DEFAULT_BASE_URL,
    Secret,
    Settings,
    SettingsError,
)


def test_defaults_point_at_the_sandbox_never_at_revor():
    settings = Settings.from_env({})
    assert settings.uses_sandbox
    assert settings.revor_base_url == SANDBOX_DEFAULT_BASE_URL
    assert settings.effective_revor_key.get() == SANDBOX_API_KEY
    assert settings.redis_url is None
    assert settings.port == 8000 and settings.web_concurrency == 2


def test_a_real_key_defaults_to_the_real_base_url():
    settings = Settings.from_env({"REVOR_API_KEY": "sk-revor-abc123"})
    assert not settings.uses_sandbox
    assert settings.revor_base_url == REVOR_DEFAULT_BASE_URL


def test_full_configuration(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\n")
    settings = Settings.from_env({
        "REDIS_URL": "rediss://:pw@redis.example.com:6380",
        "REVOR_API_KEY": "sk-revor-abc", "REVOR_BASE_URL": "http://127.0.0.1:9999/api/v1/",
        "RULES_FILE": str(rules), "HUBSPOT_CLIENT_SECRET": "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
        "HUBSPOT_ACCESS_TOKEN": "pat-1",
        "HUBSPOT_API_BASE_URL": "http://127.0.0.1:9000", "HUBSPOT_WEBHOOK_URL": "https://hooks.example.com/hs",
        "SALESFORCE_ORG_IDS": "00D5e000000Fxq2, 00D5e000000Fxq2EAC",
        "PIPEDRIVE_WEBHOOK_USER": "pd-hook", "PIPEDRIVE_WEBHOOK_PASSWORD": "fixture-pass-123",
        "GENERIC_WEBHOOK_SECRET_ZAPIER": "a-long-enough-token-123",
        "GENERIC_WEBHOOK_SECRET_SVIX": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "ADMIN_TOKEN": "0123456789abcdef", "PORT": "5050", "WEB_CONCURRENCY": "4",
    })
    assert settings.revor_base_url == "http://127.0.0.1:9999/api/v1"
    assert settings.rules_file == rules
    assert settings.salesforce_org_ids == ("00D5e000000Fxq2", "00D5e000000Fxq2EAC")
    assert set(settings.generic_webhook_secrets) == {"zapier", "svix"}
    assert settings.port == 5050 and settings.web_concurrency == 4


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REVOR_API_KEY": "abc"}, "REVOR_API_KEY: malformed, expected a key starting with 'sk-revor-'"),
        ({"REDIS_URL": "http://localhost"}, "REDIS_URL: malformed, expected a URL starting with redis://"),
        ({"REVOR_BASE_URL": "revor.ai/api"}, "REVOR_BASE_URL: malformed"),
        ({"HUBSPOT_WEBHOOK_URL": "ftp://x"}, "HUBSPOT_WEBHOOK_URL: malformed"),
        ({"RULES_FILE": "/nonexistent/rules.yaml"}, "RULES_FILE: no such file: /nonexistent/rules.yaml"),
        ({"SALESFORCE_ORG_IDS": "00D5e000000Fxq2E"}, "SALESFORCE_ORG_IDS: malformed id '00D5e000000Fxq2E'"),
        ({"PIPEDRIVE_WEBHOOK_USER": "u"}, "PIPEDRIVE_WEBHOOK_PASSWORD: missing"),
        ({"PIPEDRIVE_WEBHOOK_PASSWORD": "p" * 16}, "PIPEDRIVE_WEBHOOK_USER: missing"),
        ({"GENERIC_WEBHOOK_SECRET_ZAP": "whsec_!!!"}, "GENERIC_WEBHOOK_SECRET_ZAP: malformed"),
        ({"GENERIC_WEBHOOK_SECRET_ZAP": "short"}, "GENERIC_WEBHOOK_SECRET_ZAP: malformed"),
        ({"GENERIC_WEBHOOK_SECRET_zap-1": "a-long-enough-token-123"}, "GENERIC_WEBHOOK_SECRET_zap-1: malformed name"),
        ({"ADMIN_TOKEN": "short"}, "ADMIN_TOKEN: malformed, expected at least 16 characters"),
        ({"HUBSPOT_CLIENT_SECRET": "x"}, "HUBSPOT_CLIENT_SECRET: too short, expected at least 16 characters"),
        ({"HUBSPOT_CLIENT_SECRET": "0123456789abcde"}, "HUBSPOT_CLIENT_SECRET: too short, expected at least 16"),
        ({"PIPEDRIVE_WEBHOOK_USER": "u", "PIPEDRIVE_WEBHOOK_PASSWORD": "p"},
         "PIPEDRIVE_WEBHOOK_PASSWORD: too short, expected at least 16 characters"),
        ({"HUBSPOT_SIGNATURE_VERSIONS": "v4"}, "HUBSPOT_SIGNATURE_VERSIONS: malformed, expected a comma-separated list "
                                               "of v1, v2, v3"),
        ({"HUBSPOT_SIGNATURE_VERSIONS": "v3,,v2"}, "HUBSPOT_SIGNATURE_VERSIONS: malformed"),
        ({"HUBSPOT_SIGNATURE_VERSIONS": "v3 v2"}, "HUBSPOT_SIGNATURE_VERSIONS: malformed"),
        ({"HUBSPOT_SIGNATURE_VERSIONS": ","}, "HUBSPOT_SIGNATURE_VERSIONS: malformed"),
        ({"PORT": "http"}, "PORT: malformed, expected a whole number from 1 to 65535"),
        ({"PORT": "70000"}, "PORT: out of range"),
        ({"WEB_CONCURRENCY": "0"}, "WEB_CONCURRENCY: out of range"),
        ({"REVOR_READ_TIMEOUT": "soon"}, "REVOR_READ_TIMEOUT: malformed, expected a number"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL: malformed, expected one of"),
    ],
)
def test_malformed_settings_name_the_variable(env, message):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_secrets_never_show():
    settings = Settings.from_env({"REVOR_API_KEY": "sk-revor-topsecret",
                                  "HUBSPOT_CLIENT_SECRET": "hs-topsecret-0123456789",
                                  "ADMIN_TOKEN": "admin-topsecret-123", "PIPEDRIVE_WEBHOOK_USER": "u",
                                  "PIPEDRIVE_WEBHOOK_PASSWORD": "pd-topsecret-0123456789",
                                  "GENERIC_WEBHOOK_SECRET_Z": "generic-topsecret-1"})
    shown = repr(settings) + str(settings) + f"{settings}"
    assert "topsecret" not in shown
    assert settings.revor_api_key.get() == "sk-revor-topsecret"
    assert str(Secret("x")) == "Secret('***')"


def test_a_malformed_secret_is_not_echoed_in_the_error():
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"REVOR_API_KEY": "my-real-password"})
    assert "my-real-password" not in str(caught.value)


def test_generic_event_id_fields():
    settings = Settings.from_env({"GENERIC_WEBHOOK_EVENT_ID_FIELD_ZAPIER": "meta.run_id"})
    assert settings.generic_event_id_fields == {"zapier": "meta.run_id"}
    with pytest.raises(SettingsError, match="GENERIC_WEBHOOK_EVENT_ID_FIELD_ZAPIER: malformed"):
        Settings.from_env({"GENERIC_WEBHOOK_EVENT_ID_FIELD_ZAPIER": "a b"})


def test_whsec_secrets_with_and_without_padding():
    padded = Settings.from_env({"GENERIC_WEBHOOK_SECRET_A": "whsec_ZGVtby1zdGFuZGFyZC13ZWJob29rcy1zZWNyZXQ="})
    bare = Settings.from_env({"GENERIC_WEBHOOK_SECRET_A": "whsec_ZGVtby1zdGFuZGFyZC13ZWJob29rcy1zZWNyZXQ"})
    assert padded.generic_webhook_secrets["a"].get().startswith("whsec_")
    assert bare.generic_webhook_secrets["a"].get().startswith("whsec_")


def test_env_example_documents_every_setting():
    import re

    from tests.conftest import ROOT

    code = (ROOT / "integration" / "settings.py").read_text()
    read = set(re.findall(r'env\.\w+\("([A-Z_]+)"', code))
    read |= {"GENERIC_WEBHOOK_SECRET_", "GENERIC_WEBHOOK_EVENT_ID_FIELD_"}
    example = (ROOT / ".env.example").read_text()
    missing = [name for name in sorted(read) if name not in example]
    assert not missing, f".env.example does not mention {missing}"
    assert len(read) >= 20


def test_redis_tls_url_is_a_fallback():
    assert Settings.from_env({"REDIS_TLS_URL": "rediss://h:1"}).redis_url == "rediss://h:1"
    both = Settings.from_env({"REDIS_URL": "redis://a:1", "REDIS_TLS_URL": "rediss://b:2"})
    assert both.redis_url == "redis://a:1"
    with pytest.raises(SettingsError, match="REDIS_TLS_URL: malformed"):
        Settings.from_env({"REDIS_TLS_URL": "redis://plain:1"})


def test_hubspot_signature_versions():
    """v1 has no timestamp, so it is accepted only when named (issue 9: signature downgrade)."""
    assert Settings.from_env({}).hubspot_signature_versions == ("v3", "v2")
    assert Settings.from_env({"HUBSPOT_SIGNATURE_VERSIONS": " V3, v2 ,v1"}).hubspot_signature_versions == (
        "v3", "v2", "v1")
    assert Settings.from_env({"HUBSPOT_SIGNATURE_VERSIONS": "v3"}).hubspot_signature_versions == ("v3",)


def test_webhook_secrets_from_the_fixtures_are_long_enough():
    """The minimum (16) lets real secrets through: HubSpot's UUID-like ones and the test fixtures'."""
    from tests.servers import signatures

    secrets = signatures()["secrets"]
    settings = Settings.from_env({"HUBSPOT_CLIENT_SECRET": secrets["hubspot_client_secret"],
                                  "PIPEDRIVE_WEBHOOK_USER": secrets["pipedrive_http_auth_user"],
                                  "PIPEDRIVE_WEBHOOK_PASSWORD": secrets["pipedrive_http_auth_password"]})
    assert settings.hubspot_client_secret.get() == secrets["hubspot_client_secret"]
    assert settings.pipedrive_webhook_password.get() == "fixture-pass-123"
