"""A labelled CloudTrail workload: two weeks of noisy normal traffic, attacks at the end.

Detectors are only as good as the normal traffic they are tried on: on clean, regular data
everything looks like a detector. So the normal part here is deliberately untidy, the way a
real account is: ~40 principals (IAM users, SSO sessions, EC2/Lambda/ETL/CI/monitoring
roles), office hours in several time zones, weekends and days off, shared office NAT
addresses, home addresses that change inside their /24, a travel day now and then (a new
address outside every known /24), CLI upgrades, a few people taking up a new tool (a new
user-agent family), services explored for the first time (bursts of never-seen read APIs),
ad-hoc scripts (hundreds of calls in minutes), nightly ETL bulk reads, a daily security
scan across every service, a Lambda whose missing permission makes a third of its calls
fail, CI runners on ever-changing addresses, AccessDenied noise with retries, late joiners.

Six attack classes (``SCENARIOS``) are injected in the last ``scenario_days`` days,
``instances`` times each, every instance on a victim of its own where there are enough:

- ``credential_new_ip_ua``: an IAM user's key used from an attacker network with an attacker
  tool (python-requests, a Kali CLI, Pacu): a slow trickle of 12-35 reads, some denied;
- ``privilege_escalation``: CreateUser, AttachUserPolicy(AdministratorAccess) and
  CreateAccessKey for the new user, from an attacker network (every other instance with the
  victim's own CLI);
- ``logging_tamper``: a console login from an attacker network, then StopLogging, DeleteTrail;
- ``recon_burst``: 60-150 List/Describe/Get calls in minutes, 85% AccessDenied, then a
  success;
- ``bulk_exfiltration``: 250-800 GetObject in 3-10 minutes, with a user's stolen key and an
  attacker CLI, or (every other instance) from an EC2 role's own address and SDK;
- ``root_console_login``: the root user signs in from an attacker network, makes 2-5 calls.

Every row is a dict keyed by Sentinel ``AWSCloudTrail`` column names, as
the schema mapper produces them (absent columns are left out); ``Workload.labels[i]`` is the
scenario class of ``rows[i]`` or None for normal traffic. Everything is drawn from one
``random.Random(seed)``, so a seed gives the same workload on every machine.

    from bench.workload import generate
    wl = generate(events=200_000, seed=1)
"""

from __future__ import annotations

import json
import math
import random
import time
from bisect import bisect
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

__all__ = ["SCENARIOS", "Scenario", "Workload", "generate"]

SCENARIOS = ("credential_new_ip_ua", "privilege_escalation", "logging_tamper", "recon_burst",
             "bulk_exfiltration", "root_console_login")
"""The injected attack classes, in the order reports list them."""

START = 1_794_182_400.0  # 2026-11-09T00:00:00Z, a Monday
DAY = 86_400.0
ACCOUNTS = ("111122223333", "444455556666")

_R = {  # read-only management APIs by service
    "ec2": "DescribeInstances DescribeSecurityGroups DescribeVpcs DescribeSubnets DescribeVolumes "
           "DescribeSnapshots DescribeImages DescribeKeyPairs DescribeRouteTables DescribeRegions "
           "DescribeNetworkInterfaces DescribeAvailabilityZones DescribeAddresses "
           "DescribeInstanceStatus DescribeLaunchTemplates DescribeTags",
    "s3": "ListBuckets GetBucketLocation GetBucketPolicy GetBucketAcl GetBucketVersioning "
          "GetBucketEncryption GetBucketTagging",
    "iam": "ListUsers ListRoles GetUser GetRole ListPolicies GetPolicy GetPolicyVersion "
           "ListAttachedRolePolicies ListAttachedUserPolicies ListAccessKeys ListGroups "
           "GetAccountSummary ListMFADevices ListRolePolicies",
    "sts": "GetCallerIdentity",
    "lambda": "ListFunctions20150331 GetFunction20150331v2 GetPolicy20150331v2 ListAliases20150331",
    "logs": "DescribeLogGroups DescribeLogStreams DescribeMetricFilters",
    "monitoring": "DescribeAlarms GetMetricData ListMetrics GetMetricStatistics",
    "kms": "DescribeKey ListKeys ListAliases GetKeyPolicy",
    "secretsmanager": "ListSecrets DescribeSecret",
    "ssm": "DescribeInstanceInformation DescribeParameters GetParameter",
    "rds": "DescribeDBInstances DescribeDBClusters DescribeDBSnapshots",
    "dynamodb": "DescribeTable ListTables DescribeContinuousBackups",
    "cloudformation": "DescribeStacks ListStacks DescribeStackEvents GetTemplate",
    "ecr": "GetAuthorizationToken DescribeRepositories DescribeImages",
    "ecs": "ListClusters DescribeServices DescribeTasks ListTasks DescribeTaskDefinition",
    "cloudtrail": "DescribeTrails GetTrailStatus LookupEvents GetEventSelectors",
    "guardduty": "ListDetectors GetDetector ListFindings GetFindings",
    "config": "DescribeConfigRules DescribeConfigurationRecorders",
    "route53": "ListHostedZones ListResourceRecordSets GetHostedZone",
    "elasticloadbalancing": "DescribeLoadBalancers DescribeTargetGroups DescribeTargetHealth",
    "autoscaling": "DescribeAutoScalingGroups DescribeScalingActivities",
    "sns": "ListTopics GetTopicAttributes",
    "organizations": "DescribeOrganization ListAccounts",
}
_W = {  # writes people and pipelines make routinely
    "ec2": "RunInstances TerminateInstances StartInstances StopInstances CreateTags CreateSnapshot",
    "s3": "PutObject PutBucketTagging",
    "lambda": "UpdateFunctionCode20150331v2 UpdateFunctionConfiguration20150331v2",
    "ecs": "UpdateService RegisterTaskDefinition",
    "cloudformation": "UpdateStack CreateChangeSet ExecuteChangeSet",
    "ssm": "PutParameter SendCommand",
    "logs": "CreateLogGroup PutRetentionPolicy",
    "monitoring": "PutMetricAlarm",
    "sts": "AssumeRole",
}
_DATA = {"s3": "GetObject", "kms": "Decrypt GenerateDataKey", "secretsmanager": "GetSecretValue"}
_READ = [(s, n) for s, names in _R.items() for n in names.split()]
_WRITE = [(s, n) for s, names in _W.items() for n in names.split()]
_ERRORS = (("AccessDenied", 0.55), ("Client.UnauthorizedOperation", 0.1),
           ("NoSuchEntityException", 0.15), ("ThrottlingException", 0.12),
           ("ValidationException", 0.08))

_NAMES = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
    "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter", "xena", "yusuf",
    "zoe", "amir", "bea", "chen", "dmitri", "eva", "femi"
]
_OS = ("Darwin/23.4.0", "Linux/6.5.0-28-generic", "Windows/10", "Darwin/22.6.0")
_BROWSERS = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/{v}.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/{v}.0.0.0 Safari/537.36 Edg/{v}.0.0.0",
)
_NEW_TOOLS = ("APN/1.0 HashiCorp/1.0 Terraform/1.6.{v} (+https://www.terraform.io) "
              "terraform-provider-aws/5.31.0", "AWSToolkit/3.{v} VSCode/1.85.1 ClientId/abc",
              "aws-sdk-go-v2/1.24.{v} os/macos lang/go#1.21.5 md/GOOS#darwin api/ec2#1.141.0")
_ATTACK_UAS = (
    "python-requests/2.31.0",
    "Boto3/1.28.{v} md/Botocore#1.31.{v} ua/2.0 os/linux#6.3.0-kali1-amd64 lang/python#3.11.4",
    "aws-cli/1.16.{v} Python/2.7.18 Linux/5.10.0-kali7-amd64 botocore/1.13.48",
    "Pacu/1.5.{v} Boto3/1.26 Python/3.9.2 Linux/5.10.0-kali7-amd64",
)
_ATTACK_BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:109.0) Gecko/20100101 Firefox/115.{v}"
_ATTACK_NETS = ("185.220.101", "45.137.21", "193.42.33", "91.240.118", "5.188.206", "179.43.128")


@dataclass(frozen=True)
class Scenario:
    """One injected attack: its class, which victim, and the rows that are part of it."""

    name: str
    instance: int
    principal: str
    start: str
    indices: tuple[int, ...]


@dataclass
class Workload:
    """Rows in event-time order, their labels (scenario class or None) and the scenarios."""

    rows: list[dict[str, Any]]
    labels: list[str | None]
    scenarios: tuple[Scenario, ...]
    seed: int
    days: int
    normal_events: int = field(init=False)

    def __post_init__(self) -> None:
        self.normal_events = sum(1 for lb in self.labels if lb is None)


@dataclass
class _P:
    """A principal's profile: who it is, what it calls, from where, with what, and when."""

    kind: str
    arn: str
    itype: str
    account: str
    region: str
    user: str | None = None
    key: str = ""
    issuer: str | None = None
    apis: list[tuple[str, str]] = field(default_factory=list)
    cum: list[float] = field(default_factory=list)
    ips: list[str] = field(default_factory=list)
    agents: list[str] = field(default_factory=list)
    agent_w: list[float] = field(default_factory=list)
    tz: int = 0
    rate: float = 10.0
    err: float = 0.01
    start_day: int = 0
    browser: bool = False
    office: str = ""
    home: str = ""
    day_ips: dict[int, str] = field(default_factory=dict)
    upgrade_at: float = math.inf
    tool_at: float = math.inf

    def add_api(self, api: tuple[str, str], weight: float) -> None:
        self.apis.append(api)
        self.cum.append((self.cum[-1] if self.cum else 0.0) + weight)


class _Gen:
    def __init__(self, events: int, seed: int, days: int, principals: int) -> None:
        self.rng = random.Random(seed)
        self.events, self.days, self.n = events, days, principals
        self.out: list[tuple[float, int, dict[str, Any], str | None]] = []
        self.seq = 0
        self.label: str | None = None

    # ----------------------------------------------------------------------------- helpers
    def _id(self) -> str:
        h = f"{self.rng.getrandbits(128):032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def _key(self, prefix: str) -> str:
        return prefix + "".join(self.rng.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", k=16))

    def _public_ip(self, first: tuple[int, ...] = (24, 67, 73, 98, 71, 82, 176, 88)) -> str:
        r = self.rng
        return f"{r.choice(first)}.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(1, 255)}"

    def _poisson(self, lam: float) -> int:
        if lam <= 0:
            return 0
        if lam > 40:
            return max(0, round(self.rng.gauss(lam, math.sqrt(lam))))
        k, p, limit = 0, 1.0, math.exp(-lam)
        while True:
            p *= self.rng.random()
            if p <= limit:
                return k
            k += 1

    def emit(self, ts: float, p: _P, api: tuple[str, str], ip: str, ua: str, *,
             error: str | None = None, req: Any = None, resp: Any = None,
             label: str | None = None, itype: str | None = None) -> None:
        source, name = api
        readonly = not (name.startswith(("Put", "Create", "Delete", "Update", "Attach", "Stop",
                                         "Start", "Run", "Terminate", "Register", "Execute",
                                         "Send", "Assume", "Console")))
        data = name in ("GetObject", "PutObject", "Decrypt", "GenerateDataKey")
        row: dict[str, Any] = {
            "TimeGenerated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)),
            "EventName": name,
            "EventSource": f"{source}.amazonaws.com",
            "EventTypeName": "AwsConsoleSignIn" if name == "ConsoleLogin" else "AwsApiCall",
            "Category": "Data" if data else "Management",
            "ManagementEvent": not data,
            "ReadOnly": readonly,
            "AWSRegion": "us-east-1" if source in ("iam", "signin", "sts") else p.region,
            "RecipientAccountId": p.account,
            "SourceIpAddress": ip,
            "UserAgent": ua,
            "UserIdentityType": itype or p.itype,
            "UserIdentityArn": p.arn,
            "UserIdentityAccountId": p.account,
            "AwsEventId": self._id(),
        }
        if p.key and name != "ConsoleLogin":
            row["UserIdentityAccessKeyId"] = p.key
        if p.user:
            row["UserIdentityUserName"] = p.user
        if p.issuer:
            row["SessionIssuerArn"] = p.issuer
            row["SessionIssuerType"] = "Role"
        if error:
            row["ErrorCode"] = error
            row["ErrorMessage"] = f"User: {p.arn} is not authorized to perform: {source}:{name}"
        if req is not None:
            row["RequestParameters"] = json.dumps(req)
        if resp is not None:
            row["ResponseElements"] = json.dumps(resp)
        self.out.append((ts, self.seq, row, label))
        self.seq += 1

    def call(self, ts: float, p: _P, ip: str, ua: str, api: tuple[str, str] | None = None) -> None:
        """One routine call by ``p``: an API of its profile (or ``api``), with its error rate."""
        r = self.rng
        if api is None:
            api = p.apis[bisect(p.cum, r.random() * p.cum[-1])]
        req = None
        if api[1] in ("GetObject", "PutObject"):
            req = {"bucketName": f"{p.account}-data", "key": f"d/{r.randrange(10**6)}.parquet"}
        elif api[1] == "CreateAccessKey":
            req = {"userName": p.user}
        if r.random() < p.err:
            err = _ERRORS[bisect(_ERR_CUM, r.random())][0]
            if err == "Client.UnauthorizedOperation" and api[0] != "ec2":
                err = "AccessDenied"
            for i in range(1 + (r.randrange(2, 5) if r.random() < 0.2 else 0)):  # retries
                self.emit(ts + 2.0 * i, p, api, ip, ua, error=err, req=req)
            return
        self.emit(ts, p, api, ip, ua, req=req)

    # ---------------------------------------------------------------------------- principals
    def principals(self) -> list[_P]:
        r, n = self.rng, self.n
        ps: list[_P] = []
        office = [f"203.0.113.{h}" for h in (10, 11, 12, 13)]
        n_services = max(6, n // 4)
        n_humans = n - n_services
        for i in range(n_humans):
            acct = ACCOUNTS[0] if i % 4 else ACCOUNTS[1]
            name = _NAMES[i % len(_NAMES)] + ("" if i < len(_NAMES) else str(i))
            sso = i % 3 == 2
            if sso:
                perm = r.choice(("AdministratorAccess", "PowerUserAccess", "ReadOnlyAccess"))
                role = f"AWSReservedSSO_{perm}_{r.getrandbits(64):016x}"
                p = _P("sso", f"arn:aws:sts::{acct}:assumed-role/{role}/{name}@example.com",
                       "AssumedRole", acct, "us-east-1", key=self._key("ASIA"),
                       issuer=f"arn:aws:iam::{acct}:role/aws-reserved/sso.amazonaws.com/{role}")
            else:
                p = _P("human", f"arn:aws:iam::{acct}:user/{name}", "IAMUser", acct,
                       "us-east-1", user=name, key=self._key("AKIA"))
            p.region = r.choice(("us-east-1", "us-east-1", "eu-west-1", "us-west-2"))
            p.tz = r.choice((-8, -5, -5, 0, 1, 1, 2))
            p.rate = r.lognormvariate(math.log(30), 0.6)
            p.err = r.uniform(0.005, 0.03)
            p.start_day = r.choice((5, 9)) if i in (n_humans - 1, n_humans - 4) else 0
            services = r.sample(sorted(_R), r.randint(3, 7))
            apis = [a for a in _READ if a[0] in services]
            apis = r.sample(apis, min(len(apis), r.randint(8, 30))) + [("sts", "GetCallerIdentity")]
            if r.random() < 0.5:
                apis += r.sample([a for a in _WRITE if a[0] in services] or _WRITE[:2], 1)
            if r.random() < 0.3:
                apis.append(("s3", "GetObject"))
            for rank, api in enumerate(apis):
                p.add_api(api, 1.0 / (rank + 1) ** 0.9)
            os_ = r.choice(_OS)
            p.agents = [f"aws-cli/2.15.{r.randrange(10, 30)} Python/3.11.8 {os_} exe/x86_64 "
                        "prompt/off"]
            p.agent_w = [0.6]
            if r.random() < 0.5:
                p.browser = True
                p.agents.append(r.choice(_BROWSERS).format(v=r.randrange(118, 121)))
                p.agent_w.append(0.3)
            if r.random() < 0.4:
                p.agents.append(f"Boto3/1.34.{r.randrange(10, 60)} md/Botocore#1.34."
                                f"{r.randrange(60)} ua/2.0 os/{os_.split('/')[0].lower()} "
                                "lang/python#3.11.8")
                p.agent_w.append(0.15)
            p.office, p.home = r.choice(office), self._public_ip()
            ps.append(p)
        for j in range(n_services):
            acct = ACCOUNTS[j % 2]
            kind = ("ec2", "lambda", "etl", "ci", "monitor", "scanner", "lambda", "ec2")[j % 8]
            role = f"{kind}-{j}-role"
            sess = {"ec2": f"i-0{r.getrandbits(64):016x}", "lambda": f"{kind}-fn-{j}",
                    "etl": "emr-job", "ci": "GitHubActions", "monitor": str(r.getrandbits(40)),
                    "scanner": "SecurityAudit"}[kind]
            p = _P(kind, f"arn:aws:sts::{acct}:assumed-role/{role}/{sess}", "AssumedRole", acct,
                   r.choice(("us-east-1", "eu-west-1")), key=self._key("ASIA"),
                   issuer=f"arn:aws:iam::{acct}:role/{role}")
            p.rate = {"ec2": 40, "lambda": 25, "etl": 2, "ci": 1, "monitor": 30,
                      "scanner": 1}[kind]
            p.err = 0.3 if (kind == "lambda" and j % 8 == 6) else r.uniform(0.002, 0.01)
            if kind in ("ec2", "lambda", "etl"):
                apis = [("s3", "GetObject"), ("s3", "PutObject"), ("kms", "Decrypt"),
                        ("kms", "GenerateDataKey"), ("ssm", "GetParameter"),
                        ("secretsmanager", "GetSecretValue"), ("sts", "GetCallerIdentity"),
                        ("dynamodb", "DescribeTable")]
                p.agents = [f"aws-sdk-java/1.12.{r.randrange(400, 600)} Linux/5.10.205-195.804"
                            ".amzn2.x86_64 OpenJDK_64-Bit_Server_VM/17.0.9+8-LTS java/17.0.9"
                            if kind != "lambda" else
                            "Boto3/1.34.34 md/Botocore#1.34.34 ua/2.0 os/linux#5.10 "
                            "lang/python#3.12.1 exec-env/AWS_Lambda_python3.12"]
                p.ips = [f"10.{j}.{r.randrange(1, 4)}.{r.randrange(4, 250)}" for _ in range(3)]
            elif kind == "ci":
                apis = r.sample(_READ, 40) + _WRITE
                p.agents = [_NEW_TOOLS[0].format(v=5), "aws-cli/2.15.10 Python/3.11.6 "
                            "Linux/6.2.0-1018-azure exe/x86_64.ubuntu.22 prompt/off"]
            else:
                apis = [a for a in _READ if p.kind == "scanner" or a[0] in
                        ("ec2", "monitoring", "rds", "elasticloadbalancing", "autoscaling", "sns")]
                p.agents = ["aws-sdk-go/1.44.300 (go1.20.6; linux; amd64)"]
                p.ips = [f"3.233.{r.randrange(256)}.{r.randrange(1, 255)}" for _ in range(4)]
            p.agent_w = [1.0] * len(p.agents)
            for rank, api in enumerate(apis):
                p.add_api(api, 1.0 / (rank + 1) ** 0.7)
            ps.append(p)
        return ps

    # ------------------------------------------------------------------------------- normal
    def normal(self, ps: list[_P]) -> None:
        r = self.rng
        blocks: list[tuple[_P, float, float, float, str]] = []  # p, start, span, nominal, mode
        shape = (0.5, 1.0, 1.0, 0.9, 0.5, 0.8, 1.0, 0.9, 0.7, 0.4)  # 08h..17h local
        for p in ps:
            for d in range(p.start_day, self.days):
                day0 = START + d * DAY
                weekend = d % 7 >= 5
                if p.kind in ("human", "sso"):
                    if r.random() < (0.85 if weekend else 0.07):  # weekend / day off
                        if r.random() < 0.8:
                            continue
                    mood = r.lognormvariate(0, 0.4) * (0.15 if weekend else 1.0)
                    for h, w in enumerate(shape):
                        blocks.append((p, day0 + (8 + h - p.tz) * 3600, 3600, p.rate * w * mood,
                                       "h"))
                    if r.random() < 0.15:  # evening
                        blocks.append((p, day0 + (20 - p.tz) * 3600, 3600, p.rate * 0.3, "h"))
                    if r.random() < 0.04:  # a script: hundreds of calls in minutes
                        blocks.append((p, day0 + (r.uniform(9, 17) - p.tz) * 3600,
                                       r.uniform(300, 600), r.uniform(80, 300), "script"))
                    if r.random() < 0.05:  # a service opened for the first time
                        blocks.append((p, day0 + (r.uniform(9, 17) - p.tz) * 3600, 120, 1,
                                       "explore"))
                    if r.random() < 0.02:  # a script run without the right role: denied in a loop
                        blocks.append((p, day0 + (r.uniform(9, 17) - p.tz) * 3600,
                                       r.uniform(60, 300), r.uniform(15, 80), "denied"))
                elif p.kind == "etl":
                    blocks.append((p, day0 + 2 * 3600, r.uniform(1800, 3600),
                                   r.uniform(800, 2500), "bulk"))
                    blocks.extend((p, day0 + h * 3600, 3600, p.rate, "h") for h in range(24))
                elif p.kind == "scanner":
                    blocks.append((p, day0 + 4 * 3600, 1200, r.uniform(300, 500), "scan"))
                elif p.kind == "ci":
                    if not weekend:
                        for _ in range(r.randint(1, 8)):
                            blocks.append((p, day0 + r.uniform(13, 23) * 3600, 400,
                                           r.uniform(40, 250), "run"))
                else:
                    broken = r.randrange(24) if r.random() < 0.04 else -1  # a permission removed
                    for h in range(24):
                        busy = 12 <= h <= 22 and not weekend
                        w = 1.0 if p.kind == "monitor" else 0.5 + 0.5 * busy
                        blocks.append((p, day0 + h * 3600, 3600, p.rate * w,
                                       "broken" if h == broken else "svc"))
        scale = self.events / sum(b[3] for b in blocks if b[4] != "explore")
        end = START + self.days * DAY
        for p, t0, span, nominal, mode in blocks:
            if t0 >= end or t0 < START:
                continue
            self.block(p, t0, span, nominal * scale, mode)

    def _day_ip(self, p: _P, t: float) -> str:
        """Where a person works from on a given day: office or home; now and then elsewhere."""
        day = int((t - START) // DAY)
        ip = p.day_ips.get(day)
        if ip is None:
            r = self.rng
            if r.random() < 0.035:  # the home router got a new address in the same /24
                p.home = p.home.rsplit(".", 1)[0] + f".{r.randrange(1, 255)}"
            if r.random() < 0.012:  # travelling: a network never seen before
                ip = (f"{r.choice((81, 92, 151, 212))}.{r.randrange(256)}.{r.randrange(256)}"
                      f".{r.randrange(1, 255)}")
            else:
                ip = p.office if (day % 7 < 5 and r.random() < 0.65) else p.home
            p.day_ips[day] = ip
        return ip

    def _agent(self, p: _P, t: float) -> str:
        """One of the principal's user agents, as of ``t`` (CLI upgrades, a new tool)."""
        k = len(p.agents) if t >= p.tool_at else len(p.agents) - (p.tool_at < math.inf)
        ua = p.agents[0] if k == 1 else self.rng.choices(p.agents[:k], p.agent_w[:k])[0]
        return ua.replace("aws-cli/2.15.", "aws-cli/2.16.", 1) if t >= p.upgrade_at else ua

    def block(self, p: _P, t0: float, span: float, lam: float, mode: str) -> None:
        r = self.rng
        if mode == "explore":  # a never-used service opened for the first time, a few reads
            svc = r.choice(sorted(_R))
            ip, ua = self._day_ip(p, t0), self._agent(p, t0)
            apis = [a for a in _READ if a[0] == svc]
            for api in r.sample(apis, min(r.randint(2, 6), len(apis))):
                t0 += r.expovariate(1 / 15)
                self.call(t0, p, ip, ua, api)
                if api not in p.apis:
                    p.add_api(api, 0.05)
            return
        k = self._poisson(lam) if mode in ("h", "svc", "broken") else max(15, int(lam))
        if not k:
            return
        if p.kind in ("human", "sso"):
            ip = self._day_ip(p, t0)
            if p.browser and mode == "h" and r.random() < 0.25 and p.user:
                self.emit(t0, p, ("signin", "ConsoleLogin"), ip, p.agents[1],
                          resp={"ConsoleLogin": "Success"})
        if mode in ("h", "svc", "broken"):  # 1-3 sessions, calls seconds to a minute apart
            sessions = [r.uniform(t0, t0 + span) for _ in range(1 + (k > 8) + (k > 25))]
            times = []
            for i in range(k):
                s = i % len(sessions)
                sessions[s] += r.expovariate(1 / (30 if mode == "h" else 8))
                times.append(sessions[s])
        else:
            times = sorted(r.uniform(t0, t0 + span) for _ in range(k))
        ua = self._agent(p, t0)
        scan_apis = p.apis
        for t in times:
            if p.kind in ("human", "sso"):
                if mode == "h" and r.random() < 0.3:
                    ua = self._agent(p, t)
                if mode == "h" and r.random() < 0.002:  # a one-off call of an API never used
                    api = r.choice(_READ if r.random() < 0.85 else _WRITE)
                    self.call(t, p, ip, ua, api)
                    continue
            elif p.kind in ("lambda", "ci"):
                ip = self._public_ip((3, 52, 54, 20, 40))  # AWS / runner addresses, ever new
            else:
                ip = r.choice(p.ips)
            if mode == "bulk":
                self.call(t, p, ip, ua, ("s3", "GetObject" if r.random() < 0.8 else "PutObject"))
            elif mode == "scan":
                self.call(t, p, ip, ua, r.choice(scan_apis))
            elif mode == "script":
                self.call(t, p, ip, ua, p.apis[min(len(p.apis) - 1, int(r.expovariate(0.3)))])
            elif mode in ("denied", "broken") and r.random() < 0.9:
                rank = int(r.expovariate(2.0 if mode == "denied" else 0.5))
                api = p.apis[min(len(p.apis) - 1, rank)]
                self.emit(t, p, api, ip, ua, error="AccessDenied")
            else:
                self.call(t, p, ip, ua)

    def drift(self, ps: list[_P]) -> None:
        """CLI upgrades for half the people, a new tool (user-agent family) for a few."""
        r = self.rng
        for p in ps:
            if p.kind in ("human", "sso"):
                if r.random() < 0.5:
                    p.upgrade_at = START + r.uniform(1, self.days) * DAY
                if r.random() < 0.12:
                    p.agents.append(r.choice(_NEW_TOOLS).format(v=r.randrange(9)))
                    p.agent_w.append(0.2)
                    p.tool_at = START + r.uniform(1, self.days) * DAY

    # ----------------------------------------------------------------------------- attacks
    def attacks(self, ps: list[_P], scenario_days: int, instances: int) -> None:
        r = self.rng
        people = [p for p in ps if p.kind in ("human", "sso") and p.start_day == 0]
        users = [p for p in people if p.kind == "human"]
        consoles = [p for p in users if p.browser] or users
        apps = [p for p in ps if p.kind == "ec2"]
        first = START + (self.days - scenario_days) * DAY
        used: set[str] = set()
        for i in range(instances):
            for name in SCENARIOS:
                t = r.uniform(first, START + self.days * DAY - 3600)
                net = r.choice(_ATTACK_NETS)
                ip = f"{net}.{r.randrange(1, 255)}"
                ua = r.choice(_ATTACK_UAS).format(v=r.randrange(20))
                victim = {"credential_new_ip_ua": users, "privilege_escalation": people,
                          "logging_tamper": consoles, "recon_burst": users,
                          "bulk_exfiltration": apps if i % 2 else users}.get(name, users)
                # a victim per attack (while there are enough), so each instance is its own test
                fresh = [v for v in victim if v.arn not in used] or victim
                p = r.choice(fresh)
                if name != "root_console_login":
                    used.add(p.arn)
                self.label = f"{name}#{i}"
                getattr(self, "_" + name)(p, t, ip, ua, i)

    def _hit(self, t: float, p: _P, api: tuple[str, str], ip: str, ua: str, **kw: Any) -> None:
        self.emit(t, p, api, ip, ua, label=self.label, **kw)

    def _credential_new_ip_ua(self, p: _P, t: float, ip: str, ua: str, i: int) -> None:
        r = self.rng
        self._hit(t, p, ("sts", "GetCallerIdentity"), ip, ua)
        loot = [("s3", "ListBuckets"), ("iam", "ListUsers"), ("iam", "GetUser"),
                ("ec2", "DescribeInstances"), ("ec2", "DescribeRegions"),
                ("secretsmanager", "ListSecrets"), ("secretsmanager", "GetSecretValue"),
                ("s3", "GetObject"), ("lambda", "ListFunctions20150331"),
                ("rds", "DescribeDBInstances")]
        for _ in range(r.randint(12, 35)):
            t += r.expovariate(1 / 45)
            self._hit(t, p, r.choice(loot), ip, ua,
                      error="AccessDenied" if r.random() < 0.1 else None)

    def _privilege_escalation(self, p: _P, t: float, ip: str, ua: str, i: int) -> None:
        r = self.rng
        ua = ua if i % 2 == 0 else p.agents[0]
        new = f"svc-backup-{r.randrange(100, 999)}"
        steps = [(("sts", "GetCallerIdentity"), None), (("iam", "ListUsers"), None),
                 (("iam", "CreateUser"), {"userName": new}),
                 (("iam", "AttachUserPolicy"), {"userName": new, "policyArn":
                                                "arn:aws:iam::aws:policy/AdministratorAccess"}),
                 (("iam", "CreateAccessKey"), {"userName": new})]
        for api, req in steps:
            t += r.uniform(20, 180)
            self._hit(t, p, api, ip, ua, req=req)

    def _logging_tamper(self, p: _P, t: float, ip: str, ua: str, i: int) -> None:
        r = self.rng
        browser = _ATTACK_BROWSER.format(v=r.randrange(9))
        self._hit(t, p, ("signin", "ConsoleLogin"), ip, browser, resp={"ConsoleLogin": "Success"})
        for name in ("DescribeTrails", "GetTrailStatus", "StopLogging", "DeleteTrail"):
            t += r.uniform(30, 300)
            self._hit(t, p, ("cloudtrail", name), ip, browser,
                      req={"name": f"arn:aws:cloudtrail:us-east-1:{p.account}:trail/org-trail"})

    def _recon_burst(self, p: _P, t: float, ip: str, ua: str, i: int) -> None:
        r = self.rng
        apis = [a for a in _READ if a[1].startswith(("List", "Describe", "Get"))]
        for _ in range(r.randint(60, 150)):
            t += r.expovariate(1 / 3)
            self._hit(t, p, r.choice(apis), ip, ua,
                      error="AccessDenied" if r.random() < 0.85 else None)
        self._hit(t + 2, p, ("s3", "ListBuckets"), ip, ua)

    def _bulk_exfiltration(self, p: _P, t: float, ip: str, ua: str, i: int) -> None:
        r = self.rng
        if p.kind == "ec2":  # a compromised instance: its own address and SDK
            ip, ua = p.ips[0], p.agents[0]
        else:  # stolen keys with the attacker's own CLI
            ua = ("aws-cli/2.13.4 Python/3.11.4 Linux/6.3.0-kali1-amd64 exe/x86_64.kali.2023 "
                  "prompt/off")
        self._hit(t, p, ("s3", "ListBuckets"), ip, ua)
        n = r.randint(250, 800)
        span = r.uniform(180, 600)
        for k in range(n):
            self._hit(t + 5 + span * k / n, p, ("s3", "GetObject"), ip, ua,
                      req={"bucketName": f"{p.account}-customer-exports",
                           "key": f"export/{k:05d}.csv.gz"})

    def _root_console_login(self, p: _P, t: float, ip: str, ua: str, i: int) -> None:
        r = self.rng
        root = _P("root", f"arn:aws:iam::{p.account}:root", "Root", p.account, "us-east-1")
        browser = _ATTACK_BROWSER.format(v=r.randrange(9))
        self._hit(t, root, ("signin", "ConsoleLogin"), ip, browser,
                  resp={"ConsoleLogin": "Success"})
        for api in r.sample([("iam", "GetAccountSummary"), ("iam", "ListUsers"),
                             ("iam", "ListAccessKeys"), ("organizations", "DescribeOrganization"),
                             ("iam", "CreateAccessKey")], r.randint(2, 5)):
            t += r.uniform(10, 120)
            self._hit(t, root, api, ip, browser)


_ERR_CUM = list(accumulate(w for _, w in _ERRORS))[:-1]


def generate(events: int = 200_000, seed: int = 1, *, days: int = 14, principals: int = 40,
             scenario_days: int = 3, instances: int = 2) -> Workload:
    """A labelled workload of about ``events`` normal rows plus the injected scenarios.

    :arg events: Normal rows to aim for (the count drawn is within a few percent).
    :arg seed: Everything is drawn from ``random.Random(seed)``.
    :arg days: Event time covered, from 2026-11-09T00:00:00Z (a Monday).
    :arg principals: Normal principals; a quarter of them (at least 6) are service roles.
    :arg scenario_days: The attacks fall in the last this many days.
    :arg instances: Instances of each scenario class, each on a victim drawn at random.
    """
    if events < 1000 or days < 4 or not 1 <= scenario_days < days or principals < 12:
        msg = (f"generate() needs events >= 1000, days >= 4, 1 <= scenario_days < days and "
               f"principals >= 12; got events={events}, days={days}, "
               f"scenario_days={scenario_days}, principals={principals}")
        raise ValueError(msg)
    g = _Gen(events, seed, days, principals)
    ps = g.principals()
    g.drift(ps)
    g.normal(ps)
    g.attacks(ps, scenario_days, instances)
    g.out.sort(key=lambda e: (e[0], e[1]))
    rows = [e[2] for e in g.out]
    tags = [e[3] for e in g.out]
    found: dict[str, list[int]] = {}
    for i, tag in enumerate(tags):
        if tag is not None:
            found.setdefault(tag, []).append(i)
    scenarios = tuple(
        Scenario(tag.split("#")[0], int(tag.split("#")[1]), rows[idx[0]]["UserIdentityArn"],
                 rows[idx[0]]["TimeGenerated"], tuple(idx))
        for tag, idx in sorted(found.items(), key=lambda kv: kv[1][0]))
    labels = [None if t is None else t.split("#")[0] for t in tags]
    return Workload(rows, labels, scenarios, seed, days)
