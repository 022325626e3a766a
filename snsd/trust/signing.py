"""The SNS signature scheme: the string to sign, signing (for tests and the load tool), verifying.

AWS documents the scheme at
https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html: the string to
sign is ``Key\\nValue\\n`` for a fixed, per-type list of keys, and ``SignatureVersion`` 1 is
SHA1withRSA, 2 is SHA256withRSA, both PKCS#1 v1.5.  This module has no Twisted dependency.
"""

from __future__ import annotations

import base64
import binascii
import functools

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from snsd.trust.errors import TrustError

_NOTIFICATION_KEYS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
_CONFIRMATION_KEYS = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
_KEYS_BY_TYPE = {
    "Notification": _NOTIFICATION_KEYS,
    "SubscriptionConfirmation": _CONFIRMATION_KEYS,
    "UnsubscribeConfirmation": _CONFIRMATION_KEYS,
}
# Only Subject may be absent: a Notification published without one carries no Subject key
# (or a JSON null), and then the key is left out of the string to sign altogether.
_OPTIONAL_KEYS = frozenset({"Subject"})
# The one signed field that may span lines.  The string to sign is "key\nvalue\n" lines, so a
# line break in any other value would let a Message containing "\nMessageId\n..." be re-split
# into a different Message and MessageId under the same signature.  SNS never sends one: its
# ids, ARNs, timestamps, tokens and URLs have none, and a Subject "must not include line breaks".
_MULTILINE_KEYS = frozenset({"Message"})


class SignedFieldError(ValueError):
    """A signed field other than Message holds a line break (refused as ``bad_signed_field``)."""


#: SignatureVersion -> hash algorithm.  Anything else is refused, never guessed.
DIGESTS: dict[str, type[hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}


def string_to_sign(fields: dict) -> bytes:
    """The exact bytes SNS signs for this envelope; ``ValueError`` if a signed field is unusable."""
    message_type = fields.get("Type")
    keys = _KEYS_BY_TYPE.get(message_type) if isinstance(message_type, str) else None
    if keys is None:
        raise ValueError(f"cannot sign Type {message_type!r}")
    parts = []
    for key in keys:
        value = fields.get(key)
        if value is None and key in _OPTIONAL_KEYS:
            continue
        if not isinstance(value, str):
            raise ValueError(f"signed field {key} is missing or not a string")
        if key not in _MULTILINE_KEYS and ("\n" in value or "\r" in value):
            raise SignedFieldError(f"signed field {key} contains a line break")
        parts.append(f"{key}\n{value}\n")
    return "".join(parts).encode("utf-8")


@functools.lru_cache(maxsize=8)
def _load_private_key(pem: bytes) -> rsa.RSAPrivateKey:
    # Loading validates the RSA key, which costs far more than signing: a load tool signing
    # thousands of messages with one key must not pay it per message.
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("SNS signatures need an RSA private key")
    return key


def sign_fields(fields: dict, private_key_pem: bytes | str, version: str = "1") -> dict:
    """Return a copy of ``fields`` with ``Signature`` and ``SignatureVersion`` set.

    ``SigningCertURL`` is left as given: the caller knows where its certificate is served.
    """
    if version not in DIGESTS:
        raise ValueError(f"unsupported SignatureVersion {version!r}")
    if isinstance(private_key_pem, str):
        private_key_pem = private_key_pem.encode("ascii")
    signature = _load_private_key(private_key_pem).sign(string_to_sign(fields), padding.PKCS1v15(), DIGESTS[version]())
    signed = dict(fields)
    signed["SignatureVersion"] = version
    signed["Signature"] = base64.b64encode(signature).decode("ascii")
    return signed


def verify_signature(fields: dict, certificate: x509.Certificate) -> None:
    """Check ``fields["Signature"]`` against ``certificate``'s public key; raise :class:`TrustError`."""
    version = fields.get("SignatureVersion")
    digest = DIGESTS.get(version) if isinstance(version, str) else None
    if digest is None:
        raise TrustError(403, "unsupported_signature_version", f"SignatureVersion {version!r}")
    encoded = fields.get("Signature")
    if not isinstance(encoded, str) or not encoded:
        raise TrustError(403, "missing_signature")
    try:
        signature = base64.b64decode(encoded, validate=True)
        payload = string_to_sign(fields)
    except SignedFieldError as e:
        raise TrustError(403, "bad_signed_field", str(e)) from None
    except (binascii.Error, ValueError) as e:
        raise TrustError(403, "bad_signature", str(e)) from None
    public_key = certificate.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise TrustError(403, "untrusted_certificate", "certificate key is not RSA")
    try:
        public_key.verify(signature, payload, padding.PKCS1v15(), digest())
    except InvalidSignature:
        raise TrustError(403, "bad_signature") from None
