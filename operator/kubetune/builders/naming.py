"""Names of the objects derived from a FineTuneJob.

KubeRay refuses RayJob names over 47 characters (it appends suffixes for the RayCluster,
its pods and services) and needs DNS-1035 labels (a letter first, no dots), while a
FineTuneJob may have any DNS-1123 subdomain name up to 253 characters. So: names that
already fit are used as they are (readable); others are cut and get a hash of the full
name, so two different jobs can never share a RayJob.
"""

from __future__ import annotations

import hashlib
import re

RAYJOB_NAME_LIMIT = 47
_HASH_LENGTH = 8
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def is_dns1035_label(name: str, limit: int = 63) -> bool:
    return len(name) <= limit and bool(_DNS_1035.match(name))


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:_HASH_LENGTH]


def rayjob_name(job_name: str) -> str:
    """Deterministic, DNS-1035, at most 47 characters, distinct for distinct job names."""
    if is_dns1035_label(job_name, RAYJOB_NAME_LIMIT):
        return job_name
    cleaned = re.sub(r"[^a-z0-9-]", "-", job_name.lower())
    if not cleaned[:1].isalpha():
        cleaned = "ftj-" + cleaned
    head = cleaned[: RAYJOB_NAME_LIMIT - _HASH_LENGTH - 1].rstrip("-")
    return f"{head}-{_short_hash(job_name)}"


def report_name(job_name: str) -> str:
    return f"{rayjob_name(job_name)}-report"


def service_account_name(job_name: str) -> str:
    return f"{rayjob_name(job_name)}-trainer"
