"""Keyless auth in both directions, against real servers on 127.0.0.1.

Azure -> AWS: an Entra token for the configured audience is exchanged with STS
``AssumeRoleWithWebIdentity`` (moto behind :class:`devstack.stack.AwsGate`, which accepts only
the tokens the test says the role's OIDC provider would) for credentials that every S3/SQS
client signs with, refreshed before they expire; a source role is assumed from them.

AWS -> Azure: ``WorkloadIdentityCredential`` with a federated token file gets its token from
the emulator's Entra endpoint, and a DCR takes rows only under the client id it was issued to.
"""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from azure.core.credentials import AccessToken
from botocore.exceptions import ClientError

from connectors.aws import (
    WEB_IDENTITY_AUDIENCE,
    AwsConfig,
    EntraWebIdentity,
    refresh_windows,
    s3_client,
    sqs_client,
    web_identity,
)
from connectors.sentinel.config import DcrConfig, SentinelConfig, TargetConfig
from connectors.sentinel.errors import DeliveryError
from connectors.sentinel.service import IngestionService, make_credential
from devstack.sentinel import SentinelEmulator
from devstack.sentinel_state import CLIENT_ID as SYSTEM_ASSIGNED
from devstack.stack import AwsGate, keyless, service_account_token

ROLE = "arn:aws:iam::123456789012:role/s3sentinel-reader"
SOURCE_ROLE = "arn:aws:iam::210987654321:role/log-archive-reader"
UAMI = "5b0e6c2a-1f3d-4e5a-9b7c-8d9e0f1a2b3c"
"""Client id of the user-assigned managed identity the connector runs as in Azure."""
WI_APP = "0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"
"""The Entra app (workload identity) whose role assignment is on the DCR."""
OTHER_APP = "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"
"""Another app, federated with the same service account, without the role on the DCR."""
EKS_ISSUER = "https://oidc.eks.us-east-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"
SERVICE_ACCOUNT = "system:serviceaccount:s3sentinel:s3sentinel"
DCR_ID = "dcr-" + "ab" * 16
STREAM = "Custom-Keyless_CL"


@pytest.fixture(scope="module")
def emulator() -> Iterator[SentinelEmulator]:
    dcr = {"name": "keyless-dcr", "identity": WI_APP,
           "streams": {STREAM: {"TimeGenerated": "datetime", "Message": "string"}},
           "flows": [{"streams": [STREAM], "transformKql": "source", "outputStream": STREAM}]}
    with SentinelEmulator(rules={DCR_ID: dcr}) as emu:
        for app in (WI_APP, OTHER_APP):
            emu.add_federated_credential(app, EKS_ISSUER, SERVICE_ACCOUNT)
        yield emu


@pytest.fixture(autouse=True)
def no_aws_keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No AWS key in the environment, nothing for boto3's chain to fall back on, and no
    client left over from another test (each test's gate, hence config, is its own: so is
    its web identity session)."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in keyless(os.environ).items():
        if os.environ.get(key) != value:
            monkeypatch.setenv(key, value)
    for cached in (s3_client, sqs_client):
        cached.cache_clear()
    yield
    for cached in (s3_client, sqs_client):
        cached.cache_clear()


@dataclass
class Clock:
    """Now, moved by the test: for the credentials (datetime) and the gate (epoch)."""

    t: float = field(default_factory=lambda: datetime.now(UTC).timestamp())

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.t, UTC)

    def time(self) -> float:
        return self.t


class FakeEntra:
    """An Entra credential: a new token per call, the scopes it was asked for."""

    def __init__(self) -> None:
        self.scopes: list[tuple[str, ...]] = []
        self.issued: list[str] = []

    def get_token(self, *scopes: str, **_: object) -> AccessToken:
        self.scopes.append(scopes)
        self.issued.append(f"entra-token-{len(self.issued) + 1}")
        return AccessToken(self.issued[-1], 0)


# --------------------------------------------------------------------------- configuration


def test_web_identity_keys_are_validated_with_their_key_paths() -> None:
    good = AwsConfig(web_identity_role_arn=ROLE, web_identity_client_id=UAMI,
                     web_identity_credential="managed_identity", session_duration_secs=900)
    problems: list[str] = []
    good.validate(problems)
    assert problems == []
    AwsConfig().validate(problems)
    assert problems == []

    AwsConfig(web_identity_role_arn="arn:aws:iam::12:user/x", web_identity_audience="api://a b",
              web_identity_client_id="my-identity", session_name="x",
              session_duration_secs=600).validate(problems)
    assert [p.split(":")[0] for p in problems] == [
        "aws.session_name", "aws.web_identity_role_arn", "aws.web_identity_audience",
        "aws.web_identity_client_id", "aws.session_duration_secs"]
    assert "900..43200" in problems[-1]

    problems = []
    AwsConfig(web_identity_client_id=UAMI, web_identity_credential="workload_identity"
              ).validate(problems, "aws")
    assert problems == [
        "aws.web_identity_credential: only used with aws.web_identity_role_arn (the role the "
        "Entra token is exchanged for)",
        "aws.web_identity_client_id: only used with aws.web_identity_role_arn (the role the "
        "Entra token is exchanged for)"]


def test_the_aws_section_takes_the_web_identity_keys_and_refuses_unknown_ones() -> None:
    from dataflow.config import ConfigError, parse_config

    base = {"sentinel": {"endpoint": "https://dce.example.com", "rule_id": "dcr-1"},
            "sources": [{"name": "trail", "bucket": "b", "format": "cloudtrail"}]}
    cfg = parse_config({**base, "aws": {"web_identity_role_arn": ROLE,
                                        "web_identity_credential": "workload_identity"}},
                       environ={"S3SENTINEL__AWS__SESSION_DURATION_SECS": "1800"})
    assert cfg.aws.web_identity_audience == WEB_IDENTITY_AUDIENCE
    assert cfg.aws.session_duration_secs == 1800
    with pytest.raises(ConfigError) as ei:
        parse_config({**base, "aws": {"web_identity_rolearn": ROLE,
                                      "web_identity_credential": "certificate"}})
    assert any(p.startswith("aws.web_identity_rolearn: unknown key") for p in ei.value.problems)
    assert any(p.startswith("aws.web_identity_credential: 'certificate' is not one of")
               for p in ei.value.problems)


def test_refresh_windows_fit_short_sessions() -> None:
    assert refresh_windows(3600) == (900, 600)  # botocore's own
    assert refresh_windows(900) == (225, 150)  # not "always": a quarter, a sixth


# --------------------------------------------------------------------------- Azure -> AWS


def test_the_entra_token_is_exchanged_and_refreshed_before_the_credentials_expire(
        endpoint: str, caplog: pytest.LogCaptureFixture) -> None:
    clock, entra = Clock(), FakeEntra()
    refuse = False
    with AwsGate(endpoint, lambda token: token in entra.issued and not refuse,
                 lifetime_secs=900, clock=clock.time) as gate:
        aws = AwsConfig(endpoint_url=gate.url, web_identity_role_arn=ROLE,
                        session_duration_secs=900, session_name="s3sentinel-test")
        wi = EntraWebIdentity(aws, entra, clock=clock.now)
        assert gate.exchanges == [] and entra.scopes == []  # nothing until first used

        first = wi.credentials.get_frozen_credentials()
        assert entra.scopes == [("api://AzureADTokenExchange/.default",)]
        (ex1,) = gate.exchanges
        assert (ex1.action, ex1.role_arn, ex1.session_name, ex1.token, ex1.signed_by) == (
            "AssumeRoleWithWebIdentity", ROLE, "s3sentinel-test", "entra-token-1", None)
        assert first.access_key == ex1.access_key and ex1.expires == clock.t + 900

        advisory, mandatory = refresh_windows(900)
        clock.t = ex1.expires - advisory - 5  # not yet
        assert wi.credentials.get_frozen_credentials() == first
        assert len(gate.exchanges) == 1

        clock.t = ex1.expires - advisory + 5  # inside the refresh window: a new exchange
        second = wi.credentials.get_frozen_credentials()
        ex2 = gate.exchanges[1]
        assert (ex2.token, second.access_key) == ("entra-token-2", ex2.access_key)
        assert second.access_key != first.access_key
        assert ex2.at < ex1.expires  # refreshed before the first credentials expired
        assert entra.scopes == [("api://AzureADTokenExchange/.default",)] * 2

        # A refresh refused in the advisory window keeps the current credentials (logged);
        # from the mandatory window on the error reaches the request, saying what to check.
        refuse = True
        clock.t = ex2.expires - (advisory + mandatory) / 2
        with caplog.at_level(logging.WARNING, logger="botocore.credentials"):
            assert wi.credentials.get_frozen_credentials() == second
        assert "Refreshing temporary credentials failed" in caplog.text
        clock.t = ex2.expires - mandatory + 5
        with pytest.raises(ClientError) as ei:
            wi.credentials.get_frozen_credentials()
        assert ei.value.response["Error"]["Code"] == "InvalidIdentityToken"
        assert "trust policy" in str(ei.value) and WEB_IDENTITY_AUDIENCE in str(ei.value)
        assert len(gate.refused) == 2 and len(gate.exchanges) == 2


def test_every_client_signs_with_the_managed_identity_exchange_and_source_roles_chain_from_it(
        endpoint: str, emulator: SentinelEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in emulator.client_env().items():  # the App Service managed identity
        monkeypatch.setenv(key, value)

    def accept(token: str) -> bool:  # the role's OIDC provider: this audience, this identity
        return emulator.token_info(token) == {"resource": WEB_IDENTITY_AUDIENCE,
                                              "client_id": UAMI}

    with AwsGate(endpoint, accept) as gate:
        aws = AwsConfig(endpoint_url=gate.url, web_identity_role_arn=ROLE,
                        web_identity_credential="managed_identity", web_identity_client_id=UAMI)
        s3_client(aws).create_bucket(Bucket="keyless-direct")
        assert "keyless-direct" in [b["Name"] for b in s3_client(aws).list_buckets()["Buckets"]]
        sqs_client(aws).list_queues()
        shared = web_identity(aws).credentials  # one session for every client of the process
        assert s3_client(aws)._request_signer._credentials is shared
        assert sqs_client(aws)._request_signer._credentials is shared
        chained = s3_client(aws, SOURCE_ROLE, "ext-7")
        chained.list_buckets()

        assert [e.action for e in gate.exchanges] == ["AssumeRoleWithWebIdentity", "AssumeRole"]
        web, role = gate.exchanges
        assert gate.refused == []
        # The chained role is assumed with the web identity's credentials, with its external id.
        assert (role.role_arn, role.signed_by, role.external_id) == (SOURCE_ROLE, web.access_key,
                                                                      "ext-7")
        by_service = {(service, key) for _, key, service, _ in gate.signed}
        assert by_service == {("sts", None), ("s3", web.access_key), ("sqs", web.access_key),
                              ("sts", web.access_key), ("s3", role.access_key)}


def test_a_token_for_another_audience_is_refused_with_what_to_check(
        endpoint: str, emulator: SentinelEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in emulator.client_env().items():
        monkeypatch.setenv(key, value)
    with AwsGate(endpoint, lambda t: (emulator.token_info(t) or {}).get("resource")
                 == WEB_IDENTITY_AUDIENCE) as gate:
        aws = AwsConfig(endpoint_url=gate.url, web_identity_role_arn=ROLE,
                        web_identity_credential="managed_identity",
                        web_identity_audience="api://s3sentinel-elsewhere")
        with pytest.raises(ClientError) as ei:
            s3_client(aws).list_buckets()
        assert "api://s3sentinel-elsewhere" in str(ei.value)
        assert emulator.token_info(gate.refused[0]) == {  # the system-assigned identity's
            "resource": "api://s3sentinel-elsewhere", "client_id": SYSTEM_ASSIGNED}
        assert gate.exchanges == [] and all(key is None for _, key, _, _ in gate.signed)


# --------------------------------------------------------------------------- AWS -> Azure


def _target(emulator: SentinelEmulator, token_file: Path, client_id: str) -> TargetConfig:
    dcr = DcrConfig("keyless-dcr", DCR_ID, [STREAM])
    return TargetConfig("eks", [dcr], endpoint=emulator.endpoint,
                        credential="workload_identity", client_id=client_id,
                        tenant_id=emulator.tenant_id, token_file=str(token_file),
                        ca_file=emulator.ca_file)


def _send(target: TargetConfig, message: str) -> str:
    rows = [{"TimeGenerated": "2026-11-28T10:00:00Z", "Message": message}]
    service = IngestionService.for_dcr(SentinelConfig(), target, target.dcrs[0],
                                       make_credential(target))
    try:
        return service.send(STREAM, gzip.compress(orjson.dumps(rows)))
    finally:
        service.close()


def test_workload_identity_gets_its_token_from_entra_and_only_its_client_id_may_ingest(
        emulator: SentinelEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key, value in emulator.client_env().items():
        if not key.startswith("IDENTITY_"):  # no managed identity here: EKS
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("IDENTITY_ENDPOINT", raising=False)
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", emulator.authority_host)
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(service_account_token(EKS_ISSUER, SERVICE_ACCOUNT,
                                                "api://AzureADTokenExchange"))

    _send(_target(emulator, token_file, WI_APP), "from eks")
    assert [r["Message"] for r in emulator.records(STREAM)] == ["from eks"]

    # Another app federated with the same service account gets a token, but the DCR's role
    # assignment is for WI_APP only: 403, as the service answers.
    with pytest.raises(DeliveryError) as ei:
        _send(_target(emulator, token_file, OTHER_APP), "not allowed")
    assert ei.value.status == 403 and not ei.value.transient
    assert f"the token was issued to {OTHER_APP}" in str(ei.value)

    # A token file about another subject matches no federated credential: no token at all.
    token_file.write_text(service_account_token(EKS_ISSUER, "system:serviceaccount:x:y",
                                                "api://AzureADTokenExchange"))
    with pytest.raises(DeliveryError) as ei:
        _send(_target(emulator, token_file, WI_APP), "no token")
    cause = ei.value.__cause__
    assert type(cause).__name__ == "ClientAuthenticationError" and "AADSTS70021" in str(cause)
    assert [r["Message"] for r in emulator.records(STREAM)] == ["from eks"]
