"""Build an NLB TLS stack, step by step, recording every resource in the ledger as it appears."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from infra import certs
from infra.bucket_policy import delivery_policy
from infra.compute import Compute, Placement
from infra.interrupts import deferred
from infra.keystore import KeyStore
from infra.stack import Certificate, Stack
from infra.state import Ledger, new_state, run_directory
from infra.validation import check_against_account, validate
from infra.waits import Waits, wait_for_load_balancer, wait_for_targets

__all__ = ["build", "BUILD_STEPS"]

log = logging.getLogger(__name__)

# The build's steps in order; teardown undoes them in reverse through the ledger.
# The compute step and the waits can take minutes and handle interrupts themselves; every
# other step is a few quick calls, run with signals held so none lands between a create call
# and its ledger record.
_LONG_STEPS = {"compute", "wait-load-balancer", "wait-targets"}
BUILD_STEPS = (
    "log-bucket",
    "certificates",
    "compute",
    "target-groups",
    "load-balancer",
    "listeners",
    "access-logs",
    "wait-load-balancer",
    "wait-targets",
)


def build(
    stack: Stack,
    clients,
    compute: Compute,
    state_path,
    *,
    target: str = "aws",
    waits: Waits = Waits(),
    on_step: Callable[[str], None] | None = None,
) -> dict:
    """Build STACK with CLIENTS, its targets made by COMPUTE; return the final state.

    Everything the user can get wrong is checked first (StackConfigError, nothing created).
    The state file at STATE_PATH is written before the first create call and rewritten after
    each one, so a build that fails or is interrupted can always be torn down from it; the
    build itself never tears down. `target` is the state's `target` field (`aws`, `local`).
    `on_step(name)` is called before each of BUILD_STEPS (progress, tests, fault injection).
    """
    account_id = clients.account_id()
    validate(stack)
    check_against_account(stack, clients, account_id)
    compute.prepare(stack, clients)
    state = new_state(stack, account_id, clients.endpoint_url, target)
    ledger = Ledger.start(state_path, state)
    run = _Build(stack, clients, compute, ledger, waits)
    started = time.monotonic()
    try:
        for name in BUILD_STEPS:
            if on_step is not None:
                on_step(name)
            log.info("step %s (%.0f s since start)", name, time.monotonic() - started)
            step = getattr(run, "step_" + name.replace("-", "_"))
            if name in _LONG_STEPS:
                step()
            else:
                with deferred():
                    step()
    except BaseException:
        ledger.update(status="failed")
        raise
    ledger.update(status="ready")
    log.info("stack %s ready in %.0f s; state file %s", stack.name,
             time.monotonic() - started, ledger.path)
    return ledger.state


class _Build:
    """The steps of one build; each reads what earlier steps left in the ledger's state."""

    def __init__(self, stack: Stack, clients, compute: Compute, ledger: Ledger, waits: Waits):
        self.stack = stack
        self.clients = clients
        self.compute = compute
        self.ledger = ledger
        self.waits = waits
        self.account_id = ledger.state["account_id"]
        self.placement: Placement | None = None
        self.groups: dict[str, dict] = {}

    # 1. the log bucket
    def step_log_bucket(self) -> None:
        logs = self.stack.access_logs
        if not logs.enabled:
            return
        bucket = self.stack.bucket_name(self.account_id)
        if not logs.bucket:
            self._create_bucket(bucket)
        self.ledger.update(access_logs={"bucket": bucket, "prefix": logs.prefix,
                                        "created": not logs.bucket})

    def _create_bucket(self, bucket: str) -> None:
        s3, region = self.clients.s3, self.stack.region
        log.info("creating log bucket %s", bucket)
        if region == "us-east-1":
            # us-east-1 refuses an explicit LocationConstraint of itself.
            s3.create_bucket(Bucket=bucket)
        else:
            s3.create_bucket(Bucket=bucket,
                             CreateBucketConfiguration={"LocationConstraint": region})
        self.ledger.record("s3-bucket", bucket)
        s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": self.stack.tag_list()})
        s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
            "BlockPublicAcls": True, "IgnorePublicAcls": True,
            "BlockPublicPolicy": True, "RestrictPublicBuckets": True,
        })
        s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}],
        })
        # ACLs disabled: objects belong to the bucket owner. Log delivery still sends the
        # bucket-owner-full-control ACL, the one ACL AWS accepts under BucketOwnerEnforced
        # (others fail with AccessControlListNotSupported). moto 5.2 stores the setting but
        # accepts any ACL on PutObject and PutBucketAcl, so only AWS enforces this.
        s3.put_bucket_ownership_controls(Bucket=bucket, OwnershipControls={
            "Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}],
        })
        policy = delivery_policy(bucket, self.stack.access_logs.prefix, self.account_id,
                                 region)
        s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))

    # 2. certificates
    def step_certificates(self) -> None:
        if self.stack.certificate is None:
            return
        default = self._certificate("default", self.stack.certificate)
        extras = [self._certificate(f"sni-{i + 1}", spec)
                  for i, spec in enumerate(self.stack.extra_certificates)]
        self.ledger.update(certificate=default, sni_certificates=extras)

    def _run_directory(self) -> Path:
        directory = run_directory(self.ledger.path)
        if not any(r["type"] == "local-directory" for r in self.ledger.resources):
            self.ledger.record("local-directory", str(directory))
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.ledger.update(keystore=str(directory / "keys"))
        return directory

    def _certificate(self, label: str, spec: Certificate) -> dict:
        if spec.source == "existing":
            described = self.clients.acm.describe_certificate(CertificateArn=spec.arn)
            return {"arn": spec.arn, "domain": described["Certificate"]["DomainName"],
                    "source": "existing", "key_type": described["Certificate"]["KeyAlgorithm"],
                    "ca_bundle": str(spec.ca_bundle.absolute()) if spec.ca_bundle else None}
        directory = self._run_directory()
        if spec.source == "generate":
            chain = certs.generate_chain(spec.dns_names, spec.key_type)
            files = chain.write(directory / "certificates", name=label)
            leaf, key, intermediates = chain.leaf_pem, chain.key_pem, chain.chain_pem
            paths = {"cert_file": files.cert_file, "key_file": files.key_file,
                     "chain_file": files.chain_file, "ca_bundle": files.ca_bundle}
        else:
            # Read as validation read them: regular files, bounded (certs.MAX_PEM_FILE_BYTES).
            leaf, key = certs.read_pem_file(spec.cert_file), certs.read_pem_file(spec.key_file)
            intermediates = certs.read_pem_file(spec.chain_file) if spec.chain_file else b""
            paths = {"cert_file": spec.cert_file, "key_file": spec.key_file,
                     "chain_file": spec.chain_file, "ca_bundle": spec.ca_bundle}
        KeyStore(self.ledger.state["keystore"]).put(key)
        return self._import(label, spec, leaf, key, intermediates, paths)

    def _import(self, label, spec, leaf, key, intermediates, paths) -> dict:
        arguments = {"Certificate": leaf, "PrivateKey": key, "Tags": self.stack.tag_list()}
        if intermediates:
            arguments["CertificateChain"] = intermediates
        arn = self.clients.acm.import_certificate(**arguments)["CertificateArn"]
        self.ledger.record("acm-certificate", arn)
        described = self.clients.acm.describe_certificate(CertificateArn=arn)["Certificate"]
        log.info("imported %s certificate %s for %s", label, arn, described["DomainName"])
        entry = {"arn": arn, "domain": described["DomainName"], "source": spec.source,
                 "key_type": certs.key_type_of(leaf)}
        entry.update({k: str(Path(v).absolute()) if v else None for k, v in paths.items()})
        return entry

    # 3. network and compute
    def step_compute(self) -> None:
        self.placement = self.compute.create_targets(self.stack, self.clients, self.ledger)
        self.ledger.update(network=self.placement.state())

    # 4. target groups, targets registered
    def step_target_groups(self) -> None:
        entries = []
        for group in self.stack.target_groups:
            created = self.clients.elbv2.create_target_group(
                Name=self.stack.resource_name(group.key), Protocol=group.protocol,
                Port=group.port, VpcId=self.placement.vpc_id,
                TargetType=self.placement.target_type, Tags=self.stack.tag_list(),
                **group.health_check.api_arguments(),
            )["TargetGroups"][0]
            self.ledger.record("elbv2-target-group", created["TargetGroupArn"])
            targets = self.placement.targets.get(group.key, [])
            if targets:
                self.clients.elbv2.register_targets(
                    TargetGroupArn=created["TargetGroupArn"], Targets=targets)
            entry = {"key": group.key, "arn": created["TargetGroupArn"],
                     "name": created["TargetGroupName"], "protocol": group.protocol,
                     "port": group.port, "targets": targets}
            self.groups[group.key] = entry
            entries.append(entry)
        self.ledger.update(target_groups=entries)

    # 5. the load balancer, its listeners and access-log attributes
    def step_load_balancer(self) -> None:
        arguments = {"Name": self.stack.name, "Type": "network", "Scheme": self.stack.scheme,
                     "IpAddressType": "ipv4", "Subnets": list(self.placement.subnet_ids),
                     "Tags": self.stack.tag_list()}
        if self.placement.security_group_ids:
            arguments["SecurityGroups"] = list(self.placement.security_group_ids)
        created = self.clients.elbv2.create_load_balancer(**arguments)["LoadBalancers"][0]
        self.ledger.record("elbv2-load-balancer", created["LoadBalancerArn"])
        self.ledger.update(load_balancer={
            "arn": created["LoadBalancerArn"], "name": created["LoadBalancerName"],
            "dns_name": created["DNSName"], "scheme": created.get("Scheme")})

    def step_listeners(self) -> None:
        balancer = self.ledger.state["load_balancer"]
        entries = [self._listener(balancer, listener) for listener in self.stack.listeners]
        self.ledger.update(listeners=entries)

    def _listener(self, balancer: dict, listener) -> dict:
        group = self.groups[listener.target_group.key]
        arguments = {"LoadBalancerArn": balancer["arn"], "Protocol": listener.protocol,
                     "Port": listener.port, "Tags": self.stack.tag_list(),
                     "DefaultActions": [{"Type": "forward", "TargetGroupArn": group["arn"]}]}
        certificates = []
        if listener.protocol == "TLS":
            default = self.ledger.state["certificate"]["arn"]
            certificates = [default] + [c["arn"] for c in self.ledger.state["sni_certificates"]]
            arguments.update(SslPolicy=self.stack.ssl_policy,
                             Certificates=[{"CertificateArn": default}])
            if self.stack.alpn_policy is not None:
                arguments["AlpnPolicy"] = [self.stack.alpn_policy]
        created = self.clients.elbv2.create_listener(**arguments)["Listeners"][0]
        self.ledger.record("elbv2-listener", created["ListenerArn"])
        if certificates[1:]:
            # CreateListener takes exactly one certificate, the default; SNI ones go here.
            self.clients.elbv2.add_listener_certificates(
                ListenerArn=created["ListenerArn"],
                Certificates=[{"CertificateArn": arn} for arn in certificates[1:]])
        return {
            "arn": created["ListenerArn"], "port": listener.port,
            "protocol": listener.protocol,
            "ssl_policy": self.stack.ssl_policy if listener.protocol == "TLS" else None,
            "alpn_policy": self.stack.alpn_policy if listener.protocol == "TLS" else None,
            "certificates": certificates,
            "target_group": {k: group[k] for k in ("arn", "name", "protocol", "port")},
            "address": {"host": balancer["dns_name"], "port": listener.port},
        }

    def step_access_logs(self) -> None:
        logs = self.ledger.state["access_logs"]
        if not logs:
            return
        self.clients.elbv2.modify_load_balancer_attributes(
            LoadBalancerArn=self.ledger.state["load_balancer"]["arn"],
            Attributes=[
                {"Key": "access_logs.s3.enabled", "Value": "true"},
                {"Key": "access_logs.s3.bucket", "Value": logs["bucket"]},
                {"Key": "access_logs.s3.prefix", "Value": logs["prefix"]},
            ],
        )

    # 6. waits
    def step_wait_load_balancer(self) -> None:
        wait_for_load_balancer(self.clients, self.ledger.state["load_balancer"]["arn"],
                               self.waits)

    def step_wait_targets(self) -> None:
        wait_for_targets(self.clients, [g["arn"] for g in self.groups.values()], self.waits)
