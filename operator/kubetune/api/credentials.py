"""Credential-shaped strings: refused in URIs, replaced in any text kubetune copies. Pure.

Text that reaches a FineTuneJob's status or an event comes from places kubetune does not
control (KubeRay's messages, the trainer's errors, the API server's answers quoting a
manifest), and status and events are readable by anyone who may read the job. So every such
text goes through `redact` before it is cut to size (cutting first could split a token and
leave a readable half).

A URI with credentials in it (`s3://KEY:SECRET@bucket`, `https://user:token@host`, a signed
URL) would put them into the RayJob, the pods' command line and logs; the CRD refuses it with
a CEL rule (whose error names the field, never the value) and `kubetune validate` does the
same. Credentials belong in `output.credentialsSecretRef` / `model.tokenSecretRef`.
"""

from __future__ import annotations

import re

# One RE2-compatible expression (the CRD's CEL `matches` uses RE2): user info before a host,
# AWS access key ids, Hugging Face tokens, and the query parameters of signed URLs.
EMBEDDED_CREDENTIALS = (
    r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*@"
    r"|^[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#@]*:[^?#@]*@"
    r"|(AKIA|ASIA)[0-9A-Z]{16}"
    r"|hf_[a-zA-Z0-9]{20,}"
    r"|[?&](X-Amz-Signature|X-Amz-Credential|X-Goog-Signature|X-Goog-Credential|sig|token)="
)
_EMBEDDED = re.compile(EMBEDDED_CREDENTIALS)
CREDENTIALS_MESSAGE = (
    "must not contain credentials (user:password@, access keys, tokens or a signed URL): "
    "put them in a Secret (output.credentialsSecretRef, model.tokenSecretRef)"
)
REDACTED = "<redacted>"

# (pattern, replacement): the replacement keeps what kind of thing was there.
_REDACTIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    # user info in any URL (scheme://user:pass@host, scheme://token@host)
    (
        re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^?#\s@\"'<>]+@"),
        rf"\g<scheme>{REDACTED}@",
    ),
    (re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"), f"<aws-access-key-id {REDACTED}>"),
    (re.compile(r"\bhf_[a-zA-Z0-9]{20,}\b"), f"<hf-token {REDACTED}>"),
    (
        re.compile(r"\beyJ[a-zA-Z0-9_-]{8,}\.[a-zA-Z0-9_-]{8,}\.[a-zA-Z0-9_-]{8,}"),
        f"<jwt {REDACTED}>",
    ),
    (re.compile(r"(?i)\b(bearer|token|basic)\s+[a-zA-Z0-9._~+/=-]{12,}"), rf"\1 {REDACTED}"),
    (
        re.compile(r"\b(gh[pousr]_[a-zA-Z0-9]{20,}|xox[abprs]-[a-zA-Z0-9-]{10,})"),
        f"<token {REDACTED}>",
    ),
    # key=value / key: value where the key says it is a secret (aws_secret_access_key=...)
    (
        re.compile(
            r"(?i)(?P<key>\b[a-z0-9_.-]*(secret|password|passwd|token|api[_-]?key|access[_-]?key|"
            r"credentials?)[\"']?\s*[=:]\s*[\"']?)[^\s\"',;&<>]{4,}"
        ),
        rf"\g<key>{REDACTED}",
    ),
    # signed-URL parameters
    (
        re.compile(
            r"(?i)(?P<key>[?&](x-amz-signature|x-amz-credential|x-amz-security-token|"
            r"x-goog-signature|x-goog-credential|sig)=)[^&\s\"']+"
        ),
        rf"\g<key>{REDACTED}",
    ),
)


def has_embedded_credentials(text: str) -> bool:
    return _EMBEDDED.search(text) is not None


def redact(text: str) -> str:
    """`text` with every credential-shaped string replaced (see the module docstring)."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text
