"""Where a realtime session connects: the gateways and regions as the official v2 SDK resolves them.

With a workspace, the workspace-scoped gateway ``wss://{workspace}.{region}.maas.aliyuncs.com`` (the
recommended one); without, the region's legacy shared host. Source: dashscope 2.0.2 ``v2/_config.py``
(``WORKSPACE_WS_GATEWAY_TEMPLATE``, ``LEGACY_WS_GATEWAY_HOSTS``, ``WS_REALTIME_PATH``).
"""

from __future__ import annotations

import re
import urllib.parse

from batchqwen.errors import UsageError

REALTIME_PATH = "/api-ws/v1/realtime"
WORKSPACE_HOST = "wss://{workspace}.{region}.maas.aliyuncs.com"
LEGACY_HOSTS: dict[str, str] = {
    "cn-beijing": "wss://dashscope.aliyuncs.com",
    "ap-southeast-1": "wss://dashscope-intl.aliyuncs.com",
    "cn-hongkong": "wss://cn-hongkong.dashscope.aliyuncs.com",
    "us-east-1": "wss://dashscope-intl.aliyuncs.com",
    "eu-central-1": "wss://dashscope-intl.aliyuncs.com",
    "ap-northeast-1": "wss://dashscope-intl.aliyuncs.com",
}
REGIONS: tuple[str, ...] = tuple(LEGACY_HOSTS)
DEFAULT_REGION = "cn-beijing"
#: friendly region names accepted wherever a region is asked for
REGION_ALIASES: dict[str, str] = {
    "beijing": "cn-beijing",
    "cn": "cn-beijing",
    "china": "cn-beijing",
    "singapore": "ap-southeast-1",
    "intl": "ap-southeast-1",
    "international": "ap-southeast-1",
    "hongkong": "cn-hongkong",
    "virginia": "us-east-1",
    "frankfurt": "eu-central-1",
    "tokyo": "ap-northeast-1",
}
_WORKSPACE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")  # one DNS label


def normalize_region(region: str) -> str:
    """``cn-beijing``, ``ap-southeast-1``, ... also accepting ``beijing``, ``singapore``, ``intl``..."""
    key = region.strip().lower()
    return REGION_ALIASES.get(key, key)


def check_region(region: str) -> str:
    """The region's canonical name; an unknown one is a usage error naming the known ones."""
    name = normalize_region(region)
    if name not in LEGACY_HOSTS:
        raise UsageError(f"unknown region {region!r}; use one of {', '.join(REGIONS)}")
    return name


def gateway_url(region: str = DEFAULT_REGION, workspace: str | None = None) -> str:
    """The realtime endpoint (without ``?model=``) for a region, workspace-scoped when one is given."""
    name = check_region(region)
    if workspace:
        if not _WORKSPACE.match(workspace):
            raise UsageError(f"workspace id {workspace!r} is not a host name label (letters, digits, '-')")
        return WORKSPACE_HOST.format(workspace=workspace.lower(), region=name) + REALTIME_PATH
    return LEGACY_HOSTS[name] + REALTIME_PATH


def host_of(url: str) -> str:
    """The host (and port, if any) of a URL, for messages that say where a connection went."""
    return urllib.parse.urlsplit(url).netloc.rsplit("@", 1)[-1] or url
