"""The EC2 compute of a stack: VPC, public subnets, security groups and backend instances."""

from __future__ import annotations

import ipaddress
import logging

from botocore.exceptions import ClientError

from infra.compute import Compute, Placement
from infra.interrupts import deferred
from infra.stack import Stack, StackConfigError
from infra.user_data import render_user_data
from infra.waits import Waits, wait_for_instances

__all__ = ["Ec2Compute"]

log = logging.getLogger(__name__)


class Ec2Compute(Compute):
    """Targets on EC2 instances, for a real account (moto accepts the same calls).

    A dedicated VPC with two public subnets in two availability zones, an internet gateway and
    a default route (or the user's subnets); a security group for the load balancer admitting
    the listener ports from the client CIDR, one for the instances admitting the target ports
    from the load balancer's group only; `targets_per_group` instances of Amazon Linux 2023
    spread over the subnets, IMDSv2 required, no key pair and no port 22, each running every
    target group's server. Each instance is a target of every group.
    """

    target_type = "instance"

    def __init__(self, waits: Waits = Waits()):
        self.waits = waits
        self._user_data: bytes | None = None
        self._image_id: str | None = None
        self._zones: list[str] = []

    def prepare(self, stack: Stack, clients) -> None:
        """Render the user data (it must fit 16 KiB), resolve the AMI and pick two
        availability zones; creates nothing."""
        self._user_data = render_user_data(stack.target_groups, stack.run_id)
        self._image_id = stack.network.ami_id or self._resolve_image(stack, clients)
        if not stack.network.subnet_ids:
            self._zones = self._two_zones(stack, clients)

    @staticmethod
    def _two_zones(stack: Stack, clients) -> list[str]:
        zones = [
            zone["ZoneName"]
            for zone in clients.ec2.describe_availability_zones(
                Filters=[{"Name": "state", "Values": ["available"]},
                         {"Name": "zone-type", "Values": ["availability-zone"]}]
            )["AvailabilityZones"]
        ]
        if len(zones) < 2:
            raise StackConfigError(f"region {stack.region} offers availability zones "
                                   f"{zones}; a load balancer here needs two")
        return sorted(zones)[:2]

    @staticmethod
    def _resolve_image(stack: Stack, clients) -> str:
        name = stack.network.ami_parameter
        try:
            return clients.ssm.get_parameter(Name=name)["Parameter"]["Value"]
        except ClientError as error:
            raise StackConfigError(
                f"AMI parameter {name} cannot be read in {stack.region} "
                f"({error.response['Error'].get('Code')}); give an AMI id instead"
            ) from None

    def create_targets(self, stack: Stack, clients, ledger) -> Placement:
        if self._user_data is None:
            self.prepare(stack, clients)
        # Signals are held while resources are made and recorded (quick calls), not while
        # waiting for the instances to run.
        with deferred():
            if stack.network.subnet_ids:
                vpc_id, subnets = self._given_subnets(stack, clients)
            else:
                vpc_id, subnets = self._create_vpc(stack, clients, ledger)
            lb_group = self._load_balancer_group(stack, clients, ledger, vpc_id)
            target_group = self._target_group(stack, clients, ledger, vpc_id, lb_group)
            instances = self._run_instances(stack, clients, ledger, subnets, target_group)
        wait_for_instances(clients, instances, self.waits)
        targets = {
            group.key: [{"Id": instance, "Port": group.port} for instance in instances]
            for group in stack.target_groups
        }
        return Placement(vpc_id, tuple(subnets), (lb_group,), self.target_type, targets)

    @staticmethod
    def _given_subnets(stack: Stack, clients) -> tuple[str, list[str]]:
        described = clients.ec2.describe_subnets(SubnetIds=list(stack.network.subnet_ids))
        return described["Subnets"][0]["VpcId"], list(stack.network.subnet_ids)

    @staticmethod
    def _spec(stack: Stack, resource_type: str, suffix: str) -> list[dict]:
        return [{"ResourceType": resource_type,
                 "Tags": stack.tag_list(stack.resource_name(suffix))}]

    def _create_vpc(self, stack: Stack, clients, ledger) -> tuple[str, list[str]]:
        ec2 = clients.ec2
        vpc = ec2.create_vpc(CidrBlock=stack.network.vpc_cidr,
                             TagSpecifications=self._spec(stack, "vpc", "vpc"))["Vpc"]["VpcId"]
        ledger.record("ec2-vpc", vpc)
        gateway = ec2.create_internet_gateway(
            TagSpecifications=self._spec(stack, "internet-gateway", "igw")
        )["InternetGateway"]["InternetGatewayId"]
        ledger.record("ec2-internet-gateway", gateway)
        ec2.attach_internet_gateway(InternetGatewayId=gateway, VpcId=vpc)
        ledger.record("ec2-internet-gateway-attachment", gateway, vpc_id=vpc)
        subnets = self._create_subnets(stack, clients, ledger, vpc)
        table = ec2.create_route_table(
            VpcId=vpc, TagSpecifications=self._spec(stack, "route-table", "public")
        )["RouteTable"]["RouteTableId"]
        ledger.record("ec2-route-table", table)
        ec2.create_route(RouteTableId=table, DestinationCidrBlock="0.0.0.0/0",
                         GatewayId=gateway)
        for subnet in subnets:
            association = ec2.associate_route_table(RouteTableId=table, SubnetId=subnet)
            ledger.record("ec2-route-table-association", association["AssociationId"],
                          route_table_id=table, subnet_id=subnet)
        return vpc, subnets

    def _create_subnets(self, stack: Stack, clients, ledger, vpc: str) -> list[str]:
        halves = ipaddress.IPv4Network(stack.network.vpc_cidr).subnets(prefixlen_diff=1)
        subnets = []
        for index, (zone, cidr) in enumerate(zip(self._zones, halves)):
            subnet = clients.ec2.create_subnet(
                VpcId=vpc, CidrBlock=str(cidr), AvailabilityZone=zone,
                TagSpecifications=self._spec(stack, "subnet", f"public-{index + 1}"),
            )["Subnet"]["SubnetId"]
            ledger.record("ec2-subnet", subnet, availability_zone=zone)
            subnets.append(subnet)
        return subnets

    def _load_balancer_group(self, stack: Stack, clients, ledger, vpc: str) -> str:
        group = clients.ec2.create_security_group(
            GroupName=stack.resource_name("lb"), VpcId=vpc,
            Description=f"nlb-tls-suite load balancer, run {stack.run_id}: listener ports",
            TagSpecifications=self._spec(stack, "security-group", "lb"),
        )["GroupId"]
        ledger.record("ec2-security-group", group)
        ports = sorted({listener.port for listener in stack.listeners})
        clients.ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": port, "ToPort": port,
             "IpRanges": [{"CidrIp": stack.network.client_cidr,
                           "Description": "suite clients"}]}
            for port in ports
        ])
        return group

    def _target_group(self, stack: Stack, clients, ledger, vpc: str, lb_group: str) -> str:
        group = clients.ec2.create_security_group(
            GroupName=stack.resource_name("targets"), VpcId=vpc,
            Description=f"nlb-tls-suite targets, run {stack.run_id}: from the load balancer",
            TagSpecifications=self._spec(stack, "security-group", "targets"),
        )["GroupId"]
        ledger.record("ec2-security-group", group)
        # Traffic and health checks both come from the load balancer, which carries lb_group.
        ports = {g.port for g in stack.target_groups}
        ports |= {int(g.health_check.port) for g in stack.target_groups
                  if g.health_check.port != "traffic-port"}
        clients.ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": port, "ToPort": port,
             "UserIdGroupPairs": [{"GroupId": lb_group, "Description": "load balancer"}]}
            for port in sorted(ports)
        ])
        return group

    def _run_instances(self, stack: Stack, clients, ledger, subnets, group: str) -> list[str]:
        instances = []
        for index in range(stack.targets_per_group):
            name = f"target-{index + 1}"
            reservation = clients.ec2.run_instances(
                ImageId=self._image_id, InstanceType=stack.network.instance_type,
                MinCount=1, MaxCount=1, SubnetId=subnets[index % len(subnets)],
                SecurityGroupIds=[group], UserData=self._user_data,
                # IMDSv2 only: a token is required, and one hop keeps it on the instance.
                MetadataOptions={"HttpTokens": "required", "HttpEndpoint": "enabled",
                                 "HttpPutResponseHopLimit": 1},
                TagSpecifications=[
                    {"ResourceType": kind, "Tags": stack.tag_list(stack.resource_name(name))}
                    for kind in ("instance", "volume")
                ],
            )
            instance = reservation["Instances"][0]["InstanceId"]
            ledger.record("ec2-instance", instance)
            instances.append(instance)
        return instances
