"""Keyless end to end: the real dataflow (``python -m bytewax.run``) with no AWS key anywhere.

In Azure, reading AWS: the flow gets an Entra token for the role's audience from the
emulator's managed identity endpoint and exchanges it with STS ``AssumeRoleWithWebIdentity``
(moto behind :class:`devstack.stack.AwsGate`, which plays the role's OIDC provider and
records which key signed every request); the credentials are made to need a refresh two
seconds after each exchange, so a run shows them refreshed before they expire while it
reads, and a source role assumed from them.

In AWS (EKS), writing to Azure: boto3's default chain with IAM roles for service accounts
(a projected token file, ``AWS_ROLE_ARN``), and a ``workload_identity`` target whose token
comes from the emulator's Entra endpoint for a federated service account token; the DCRs
accept only that app's client id.
"""

from __future__ import annotations

import base64
import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from connectors.aws import WEB_IDENTITY_AUDIENCE, refresh_windows
from dataflow.dcr import dcr_template
from devstack.demo import flow_env as demo_flow_env
from devstack.deploy import deploy
from devstack.samples import cloudtrail_event, cloudtrail_key, cloudtrail_object, seed_cloudtrail
from devstack.stack import AwsGate, Exchange, LocalStack, keyless, service_account_token
from operators.schema import load_tables
from tests.conftest import ROOT, flow_env

TRAIL = "Custom-AWSCloudTrail"
ROLE = "arn:aws:iam::123456789012:role/s3sentinel-reader"
SOURCE_ROLE = "arn:aws:iam::210987654321:role/log-archive-reader"
UAMI = "5b0e6c2a-1f3d-4e5a-9b7c-8d9e0f1a2b3c"
WI_APP = "0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"
EKS_ISSUER = "https://oidc.eks.us-east-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"
SERVICE_ACCOUNT = "system:serviceaccount:s3sentinel:s3sentinel"


def _wait(what: str, done: Callable[[], bool], proc: subprocess.Popen, secs: float = 60) -> None:
    deadline = time.monotonic() + secs
    while not done():
        assert proc.poll() is None, f"the flow exited while waiting for {what}"
        assert time.monotonic() < deadline, f"no {what} within {secs}s"
        time.sleep(0.1)


def _arrived(stack: LocalStack) -> set[str]:
    return {r["AwsEventId"] for r in stack.admin().records(TRAIL)}


def _check_signatures(gate: AwsGate) -> dict[str, Exchange]:
    """Every request was signed by a key the gate's STS issued, before it expired (or is
    an unsigned web identity exchange); returns the exchanges by issued key."""
    issued = {e.access_key: e for e in gate.exchanges}
    assert issued and gate.refused == []
    for at, key, service, what in gate.signed:
        if key is None:
            assert service == "sts", f"an unsigned request that is not an exchange: {what}"
            continue
        assert key in issued, f"{what} signed by {key}, a key STS never issued (a static key?)"
        assert at < issued[key].expires, f"{what} signed by {key} after it expired"
    return issued


def test_in_azure_the_flow_reads_aws_with_a_refreshed_web_identity_and_no_key(
        clean: LocalStack, tmp_path: Path) -> None:
    admin, s3 = clean.admin(), clean.s3()
    trail = seed_cloudtrail(s3, "keyless-trail", objects=4, seed=21, digests=False)
    partner = seed_cloudtrail(s3, "keyless-partner", objects=3, seed=22, digests=False)

    def accept(token: str) -> bool:  # the role trusts this audience, this identity
        return admin.token_info(token) == {"resource": WEB_IDENTITY_AUDIENCE, "client_id": UAMI}

    cfg = tmp_path / "keyless.toml"
    cfg.write_text(f"""
[aws]
web_identity_role_arn = "{ROLE}"
web_identity_credential = "managed_identity"
web_identity_client_id = "{UAMI}"
session_duration_secs = 900

[batch]
max_age_secs = 0.5

[runtime]
mode = "continuous"

[[sources]]
name = "trail"
bucket = "keyless-trail"
format = "cloudtrail"
table = "AWSCloudTrail"
poll_secs = 0.5

[[sources]]
name = "partner"
bucket = "keyless-partner"
format = "cloudtrail"
table = "AWSCloudTrail"
poll_secs = 0.5
role_arn = "{SOURCE_ROLE}"
external_id = "partner-7"
""")
    # A 900 s session is refreshed in its last quarter (225 s): credentials issued to last
    # 227 s need a refresh 2 s after each exchange (as if issued 673 s earlier).
    assert refresh_windows(900)[0] == 225
    with AwsGate(clean.s3_endpoint, accept, lifetime_secs=227) as gate:
        env = keyless(flow_env(clean, cfg, tmp_path / "errors")
                      | {"S3SENTINEL__AWS__ENDPOINT_URL": gate.url})
        assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} & set(env)
        proc = subprocess.Popen([sys.executable, "-m", "bytewax.run", "dataflow.flow:flow"],
                                env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        try:
            want = trail.event_ids | partner.event_ids
            _wait("seeded records", lambda: want <= _arrived(clean), proc)
            web = lambda: [e for e in gate.exchanges  # noqa: E731 (a probe polled by _wait)
                           if e.action == "AssumeRoleWithWebIdentity"]
            _wait("a refresh", lambda: len(web()) >= 2, proc)
            # Objects landing now are read with refreshed credentials.
            rng = random.Random(23)
            when = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
            late = {}
            for bucket in ("keyless-trail", "keyless-partner"):
                events = [cloudtrail_event(rng, account="111122223333", region="us-east-1",
                                           when=when) for _ in range(30)]
                late[bucket] = cloudtrail_key("111122223333", "us-east-1", when, rng)
                s3.put_object(Bucket=bucket, Key=late[bucket], Body=cloudtrail_object(events))
                want |= {e["eventID"] for e in events}
            _wait("records written while running", lambda: want <= _arrived(clean), proc)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                _, stderr = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, stderr = proc.communicate()

    assert _arrived(clean) == want, stderr[-3000:]
    _check_signatures(gate)
    webs = [e for e in gate.exchanges if e.action == "AssumeRoleWithWebIdentity"]
    assert len(webs) >= 2 and all((e.role_arn, e.signed_by) == (ROLE, None) for e in webs)
    for before, after in zip(webs, webs[1:], strict=False):
        assert after.at < before.expires  # refreshed before they expired
        assert after.at - before.at >= 1.9  # by one session of the process, when due
    web_keys = [e.access_key for e in webs]
    # The partner source reads through its role, assumed from a web identity session.
    roles = [e for e in gate.exchanges if e.action == "AssumeRole"]
    assert roles and all(e.role_arn == SOURCE_ROLE and e.external_id == "partner-7"
                         and e.signed_by in web_keys for e in roles)
    role_keys = {e.access_key for e in roles}
    for _, key, service, what in gate.signed:
        if service == "s3" and "/keyless-partner" in what:
            assert key in role_keys, what
        elif service == "s3":
            assert key in web_keys, what
    late_gets = [key for _, key, _, what in gate.signed
                 if what == f"GET /keyless-trail/{late['keyless-trail']}"]
    assert late_gets and all(web_keys.index(k) >= 1 for k in late_gets)  # refreshed ones
    print(f"\nkeyless flow: {len(webs)} web identity exchanges "
          f"({', '.join(f'{b.at - a.at:.1f}s' for a, b in zip(webs, webs[1:], strict=False))} "
          f"apart), {len(roles)} source role, {len(gate.signed)} requests through the gate")


def _claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_on_eks_the_flow_uses_irsa_for_aws_and_workload_identity_for_azure(
        tmp_path: Path) -> None:
    tables = load_tables()
    template = dcr_template([tables["AWSCloudTrail"], tables["S3SentinelHealth_CL"]])
    rules = deploy(template, "", tables, identity=WI_APP).rules  # only WI_APP may ingest
    aws_token = tmp_path / "eks.amazonaws.com-token"
    aws_token.write_text(service_account_token(EKS_ISSUER, SERVICE_ACCOUNT, "sts.amazonaws.com"))
    azure_token = tmp_path / "azure-identity-token"
    azure_token.write_text(service_account_token(EKS_ISSUER, SERVICE_ACCOUNT,
                                                 "api://AzureADTokenExchange"))

    def accept(token: str) -> bool:  # IAM's OIDC provider for the EKS cluster's issuer
        claims = _claims(token)
        return (claims["iss"], claims["sub"]) == (EKS_ISSUER, SERVICE_ACCOUNT) and (
            "sts.amazonaws.com" in claims["aud"])

    with LocalStack(tmp_path / "stack", rules=rules) as stack, \
            AwsGate(stack.s3_endpoint, accept) as gate:
        stack.admin().add_federated_credential(WI_APP, EKS_ISSUER, SERVICE_ACCOUNT)
        trail = seed_cloudtrail(stack.s3(), "eks-trail", objects=5, seed=31, digests=False)
        outputs = deploy(template, stack.info["endpoint"], tables).outputs
        target = {"name": "eks", "credential": "workload_identity", "client_id": WI_APP,
                  "tenant_id": stack.info["tenant_id"], "token_file": str(azure_token),
                  "ca_file": stack.info["ca_file"],
                  "dcrs": [{"name": d["name"], "id": d["immutableId"], "endpoint": d["endpoint"],
                            "streams": d["streams"]} for d in outputs["dcrs"]["value"]]}
        cfg = tmp_path / "eks.toml"
        cfg.write_text("""
[batch]
max_age_secs = 0.5
[runtime]
mode = "catch_up"
[[sources]]
name = "trail"
bucket = "eks-trail"
format = "cloudtrail"
table = "AWSCloudTrail"
""")
        env = keyless(demo_flow_env(stack, tmp_path / "errors", cfg, targets=[target]))
        for key in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER"):  # no managed identity on EKS
            env.pop(key)
        env |= {  # what the EKS pod identity webhook sets; endpoints at the local stack
            "AWS_ROLE_ARN": ROLE, "AWS_WEB_IDENTITY_TOKEN_FILE": str(aws_token),
            "AWS_ROLE_SESSION_NAME": "s3sentinel", "AWS_ENDPOINT_URL_STS": gate.url,
            "AZURE_AUTHORITY_HOST": stack.info["authority_host"],
            "S3SENTINEL__AWS__ENDPOINT_URL": gate.url, "S3SENTINEL__OPS__PORT": "0"}
        proc = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflow.flow:flow"],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=240,
                              check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]

        assert _arrived(stack) == trail.event_ids
        requests = stack.admin().requests()
        assert requests and all(r["status"] == 204 for r in requests)  # WI_APP's token passed
        assert {s["identity"] for s in stack.admin().rule_stats().values()
                if s["form"] == "definition"} == {WI_APP}
        issued = _check_signatures(gate)
        (exchange,) = issued.values()
        assert (exchange.action, exchange.role_arn, exchange.token) == (
            "AssumeRoleWithWebIdentity", ROLE, aws_token.read_text())
        assert {key for _, key, service, _ in gate.signed if service == "s3"} == {
            exchange.access_key}
