"""No field of a record is silently lost: each one has a column or lands in the catch-all.

The catch-all (``source = "*"``, AdditionalFields_CF on the standard tables) keeps every
top-level field no column reads, and every member of an object other columns read from
(``userIdentity.onBehalfOf`` beside ``userIdentity.arn``) under its dotted path.
"""

from __future__ import annotations

import copy
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devstack import samples
from operators.schema import Mapper, TableDef, TableError, load_tables
from tests.operators.formats.test_json_tables import SAMPLES

TABLES = load_tables()
MAPPERS = {name: Mapper(TABLES[name]) for name in ("AWSCloudTrail", "AWSGuardDuty", "AWSWAF")}
ACCT = "123456789012"
STORE = f"arn:aws:identitystore::{ACCT}:identitystore/d-9067642ac7"

# An IAM Identity Center user's call (userIdentity element reference, "userIdentity for a
# request made on behalf of an IAM Identity Center user"): who really signed in is only in
# onBehalfOf, which has no column of the Azure table.
IDENTITY_CENTER = {
    "eventVersion": "1.09",
    "userIdentity": {
        "type": "IdentityCenterUser", "accountId": ACCT,
        "onBehalfOf": {"userId": "544894e8-80c1-707f-60e3-3ba6510dfac1",
                       "identityStoreArn": STORE},
        "credentialId": "EXAMPLEVHULjJdTUdPJfofVa1sufHDoj7aYcOYcxFVllWR_Whr1fEXAMPLE"},
    "eventTime": "2026-11-01T10:05:00Z", "eventSource": "sso.amazonaws.com",
    "eventName": "ListApplications", "awsRegion": "us-east-1",
    "sourceIPAddress": "203.0.113.10", "userAgent": "Mozilla/5.0",
    "requestParameters": None, "responseElements": None,
    "requestID": "a7a8c1ba-2a37-4a6f-8f3d-2c1e0d9f6b10",
    "eventID": "5c1d2a63-0f43-4b4b-8d1c-8b5e8e2d7f21", "readOnly": True,
    "eventType": "AwsApiCall", "managementEvent": True, "recipientAccountId": ACCT,
    "eventCategory": "Management",
    "tlsDetails": {"tlsVersion": "TLSv1.3", "cipherSuite": "TLS_AES_128_GCM_SHA256",
                   "clientProvidedHostHeader": "portal.sso.us-east-1.amazonaws.com"},
}


def both(table: str, rec: dict[str, Any]) -> dict[str, Any]:
    """The row from both paths of the Mapper, which must be the same (AdditionalFields_CF's
    keys may come in another order: the fast path gathers known members in their order)."""
    m = MAPPERS[table]
    row: dict[str, Any] = orjson.loads(m.map_json(orjson.dumps(rec), "r"))
    assert row == orjson.loads(m.map_dict(copy.deepcopy(rec), "r"))
    return row


def test_an_identity_center_user_is_kept_on_the_fast_path() -> None:
    """onBehalfOf (who signed in) and credentialId land in AdditionalFields_CF."""
    row = both("AWSCloudTrail", IDENTITY_CENTER)
    assert row == {
        "AwsEventId": "5c1d2a63-0f43-4b4b-8d1c-8b5e8e2d7f21", "AWSRegion": "us-east-1",
        "AwsRequestId_": "a7a8c1ba-2a37-4a6f-8f3d-2c1e0d9f6b10", "Category": "Management",
        "CipherSuite": "TLS_AES_128_GCM_SHA256",
        "ClientProvidedHostHeader": "portal.sso.us-east-1.amazonaws.com",
        "EventName": "ListApplications", "EventSource": "sso.amazonaws.com",
        "EventTypeName": "AwsApiCall", "EventVersion": "1.09", "ManagementEvent": True,
        "ReadOnly": True, "RecipientAccountId": ACCT, "SourceIpAddress": "203.0.113.10",
        "TimeGenerated": "2026-11-01T10:05:00Z", "TlsVersion": "TLSv1.3",
        "UserAgent": "Mozilla/5.0", "UserIdentityAccountId": ACCT,
        "UserIdentityType": "IdentityCenterUser",
        "AdditionalFields_CF": {
            "userIdentity.onBehalfOf": {"userId": "544894e8-80c1-707f-60e3-3ba6510dfac1",
                                        "identityStoreArn": STORE},
            "userIdentity.credentialId":
                "EXAMPLEVHULjJdTUdPJfofVa1sufHDoj7aYcOYcxFVllWR_Whr1fEXAMPLE"},
        "RecordId_CF": "r"}
    fast = Mapper(TABLES["AWSCloudTrail"])

    def generic(*_: Any) -> dict[str, Any]:
        raise AssertionError("took the generic path")

    fast.row_dict = generic  # type: ignore[method-assign]
    assert orjson.loads(fast.map_json(orjson.dumps(IDENTITY_CENTER), "r")) == row


def test_an_unknown_nested_member_is_kept_by_the_generic_path() -> None:
    ui = {**IDENTITY_CENTER["userIdentity"], "sessionContext": {
        "attributes": {"creationDate": "2026-11-01T09:00:00Z", "mfaAuthenticated": "true",
                       "newAttribute": [1, {"a": "b"}]},
        "webIdFederationData": {}, "sourceIdentity": "alice"}}
    row = both("AWSCloudTrail", {**IDENTITY_CENTER, "userIdentity": ui,
                                 "tlsDetails": {"tlsVersion": "TLSv1.2", "keyExchange": "x"}})
    assert row["SessionMfaAuthenticated"] is True
    assert row["AdditionalFields_CF"] == {
        "userIdentity.onBehalfOf": ui["onBehalfOf"],
        "userIdentity.credentialId": ui["credentialId"],
        "userIdentity.sessionContext.attributes.newAttribute": [1, {"a": "b"}],
        "userIdentity.sessionContext.sourceIdentity": "alice",
        "tlsDetails.keyExchange": "x"}  # the empty webIdFederationData has no value: left out


@pytest.mark.parametrize("value", [None, {}, [], "odd"])
def test_a_mapped_object_of_another_shape(value: Any) -> None:
    """A value where an object is expected is kept whole, unless it has no value."""
    row = both("AWSCloudTrail", {**IDENTITY_CENTER, "userIdentity": value})
    assert "UserIdentityType" not in row
    kept = row.get("AdditionalFields_CF", {})
    assert kept == ({"userIdentity": value} if value == "odd" else {})


def test_members_of_a_list_entry_are_kept() -> None:
    """An object read from at a list index: its other members and the other entries are kept."""
    m = Mapper(TableDef.from_mapping({"table": "L_CL", "columns": [
        {"name": "TimeGenerated", "type": "datetime", "source": "time"},
        {"name": "First", "type": "string", "source": "items.0.name"},
        {"name": "Rest", "type": "dynamic", "source": "*"}]}, "t"))
    rec = {"time": 0, "items": [{"name": "a", "id": 1}, {"name": "b"}]}
    fast = orjson.loads(m.map_json(orjson.dumps(rec), "r"))
    assert fast == orjson.loads(m.map_dict(copy.deepcopy(rec), "r"))
    assert fast["First"] == "a"
    assert fast["Rest"] == {"items.0.id": 1, "items.1": {"name": "b"}}


@pytest.mark.parametrize("known", ["user.name", "user.name.first", "other.x", "user"])
def test_a_known_member_must_be_an_unmapped_member_of_a_mapped_object(known: str) -> None:
    columns = [{"name": "TimeGenerated", "type": "datetime", "source": "time"},
               {"name": "Name", "type": "string", "source": "user.name"},
               {"name": "Rest", "type": "dynamic", "source": "*", "known": [known]}]
    if known == "user":  # a top-level name: always accepted (unused when a column reads it)
        TableDef.from_mapping({"table": "K_CL", "columns": columns}, "t")
        return
    with pytest.raises(TableError, match="not an unmapped member"):
        TableDef.from_mapping({"table": "K_CL", "columns": columns}, "t")


# --------------------------------------------------------------------------- the property

_KEY = st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=6).map(lambda s: "new" + s)
_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_KEY, children, max_size=3),
    max_leaves=6)


def _objects(v: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The paths of every object in ``v`` (``()`` for ``v`` itself), through lists too."""
    out = [path] if isinstance(v, dict) else []
    items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
    for k, x in items:
        out += _objects(x, (*path, str(k)))
    return out


def _at(v: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        v = v[int(part)] if isinstance(v, list) else v[part]
    return v


def _walk(v: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if isinstance(v, dict) and part in v:
            v = v[part]
        elif isinstance(v, list) and part.isdigit() and int(part) < len(v):
            v = v[int(part)]
        else:
            return ...
    return v


def _leaves(v: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every scalar of ``v`` but null, with its path (list indexes as digits)."""
    if isinstance(v, (dict, list)):
        items = v.items() if isinstance(v, dict) else enumerate(v)
        return [leaf for k, x in items for leaf in _leaves(x, (*path, str(k)))]
    return [] if v is None else [(path, v)]


def _found(table: TableDef, row: dict[str, Any], path: tuple[str, ...], value: Any) -> bool:
    """Whether the leaf at ``path`` is in some column of ``row``."""
    for col in table.columns:
        if col.source == ("*",):
            for key, kept in row.get(col.name, {}).items():
                prefix = tuple(key.split("."))
                if path[:len(prefix)] == prefix and _walk(kept, path[len(prefix):]) == value:
                    return True
        elif path[:len(col.source)] == col.source and col.name in row:
            rest = path[len(col.source):]
            if not rest:  # the column's own value (coerced to its type)
                return True
            held = row[col.name]
            if isinstance(held, str):  # an object or array as JSON text
                held = orjson.loads(held)
            if _walk(held, rest) == value:
                return True
    return False


def _cloudtrail(seed: int) -> dict[str, Any]:
    when = datetime(2026, 11, 1, tzinfo=UTC) + timedelta(seconds=seed)
    return samples.cloudtrail_event(random.Random(seed), account=ACCT, region="eu-west-1",
                                    when=when)


_BASES = st.one_of(
    st.integers(0, 10_000).map(lambda seed: ("AWSCloudTrail", _cloudtrail(seed))),
    st.just(("AWSCloudTrail", IDENTITY_CENTER)),
    st.sampled_from([s for s in SAMPLES if s[0] in ("AWSGuardDuty", "AWSWAF")]))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), base=_BASES)
def test_every_leaf_of_the_record_is_in_the_row(data: st.DataObject,
                                               base: tuple[str, dict[str, Any]]) -> None:
    """CloudTrail, GuardDuty and WAF records with new fields added at any depth."""
    table, rec = base[0], copy.deepcopy(base[1])
    for _ in range(data.draw(st.integers(1, 4))):
        obj = _at(rec, data.draw(st.sampled_from(_objects(rec))))
        key = data.draw(_KEY.filter(lambda k, obj=obj: k not in obj))
        obj[key] = data.draw(_VALUE)
    row = both(table, rec)
    for path, value in _leaves(rec):
        assert _found(TABLES[table], row, path, value), (".".join(path), value)
