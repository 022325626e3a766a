"""The SNS signature scheme, with real RSA keys: what is signed, both versions, every field tampered."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from snsd.trust.errors import TrustError
from snsd.trust.signing import sign_fields, string_to_sign, verify_signature
from tests.trust_helpers import (
    ec_key,
    make_certificate,
    notification,
    private_key_pem,
    rsa_key,
    signed,
    subscription_confirmation,
)

CERT = make_certificate(rsa_key())
NOTIFICATION_SIGNED = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
CONFIRMATION_SIGNED = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")


def test_notification_string_to_sign_is_key_newline_value_in_order():
    fields = {
        "Type": "Notification",
        "MessageId": "m-1",
        "TopicArn": "arn:aws:sns:us-east-1:1:t",
        "Subject": "subj",
        "Message": "hello\nworld",
        "Timestamp": "2012-05-02T00:54:06.655Z",
        "UnsubscribeURL": "https://example/unsigned",
    }
    assert string_to_sign(fields) == (
        b"Message\nhello\nworld\nMessageId\nm-1\nSubject\nsubj\nTimestamp\n2012-05-02T00:54:06.655Z\n"
        b"TopicArn\narn:aws:sns:us-east-1:1:t\nType\nNotification\n"
    )


def test_subject_is_left_out_when_absent_or_null():
    fields = notification()
    assert b"Subject" not in string_to_sign(fields)
    assert string_to_sign({**fields, "Subject": None}) == string_to_sign(fields)
    assert b"Subject\n\n" in string_to_sign({**fields, "Subject": ""})


@pytest.mark.parametrize("message_type", ["SubscriptionConfirmation", "UnsubscribeConfirmation"])
def test_confirmation_string_to_sign_has_subscribe_url_and_token(message_type):
    fields = subscription_confirmation(message_type=message_type)
    text = string_to_sign(fields).decode()
    keys = text.split("\n")[0::2][:-1]
    assert keys == list(CONFIRMATION_SIGNED)


def test_unknown_type_cannot_be_signed():
    with pytest.raises(ValueError):
        string_to_sign({**notification(), "Type": "Surprise"})


@pytest.mark.parametrize("version", ["1", "2"])
@pytest.mark.parametrize("subject", [None, "Amazon S3 Notification"])
def test_signed_notification_verifies(version, subject):
    fields = signed(notification(subject=subject), version=version)
    assert fields["SignatureVersion"] == version
    verify_signature(fields, CERT)


@pytest.mark.parametrize("version", ["1", "2"])
def test_signed_confirmation_verifies(version):
    verify_signature(signed(subscription_confirmation(), version=version), CERT)


@pytest.mark.parametrize("version", ["1", "2"])
@pytest.mark.parametrize("field", NOTIFICATION_SIGNED)
def test_tampering_any_signed_notification_field_breaks_the_signature(version, field):
    fields = signed(notification(subject="original subject"), version=version)
    fields[field] = fields[field] + "x"
    with pytest.raises(TrustError) as e:
        verify_signature(fields, CERT)
    assert (e.value.status, e.value.reason) == (403, "bad_signature")


@pytest.mark.parametrize("field", CONFIRMATION_SIGNED)
def test_tampering_any_signed_confirmation_field_breaks_the_signature(field):
    fields = signed(subscription_confirmation(), version="2")
    fields[field] = fields[field] + "x"
    with pytest.raises(TrustError, match="bad_signature"):
        verify_signature(fields, CERT)


def test_adding_a_subject_to_a_message_signed_without_one_breaks_the_signature():
    fields = signed(notification())
    fields["Subject"] = "injected"
    with pytest.raises(TrustError, match="bad_signature"):
        verify_signature(fields, CERT)


def resplit(fields: dict) -> dict:
    """The forgery of issue 15: a signed Message ending in "\nMessageId\n<text>" re-split so that
    Message loses that tail and MessageId gains it.  The string to sign is unchanged."""
    message, marker, moved = fields["Message"].rpartition("\nMessageId\n")
    assert marker, "the signed Message must contain the marker"
    return {**fields, "Message": message, "MessageId": f"{moved}\nMessageId\n{fields['MessageId']}"}


@pytest.mark.parametrize("version", ["1", "2"])
def test_text_moved_from_message_to_message_id_is_refused(version):
    genuine = signed(notification(message='{"Records": []}\nMessageId\nchosen-by-the-sender'), version=version)
    verify_signature(genuine, CERT)
    forged = resplit(genuine)
    # The same bytes, so the same signature covers the forgery.
    assert lines(forged, NOTIFICATION_SIGNED[:2]) == lines(genuine, NOTIFICATION_SIGNED[:2])
    with pytest.raises(TrustError) as e:
        verify_signature(forged, CERT)
    assert (e.value.status, e.value.reason) == (403, "bad_signed_field")
    assert "MessageId" in e.value.detail


def lines(fields: dict, keys: tuple[str, ...]) -> bytes:
    """The "key\\nvalue\\n" lines of ``keys``, built here without snsd's rules."""
    return "".join(f"{k}\n{fields[k]}\n" for k in keys).encode()


def signed_as_written(fields: dict, keys: tuple[str, ...]) -> dict:
    """``fields`` signed over :func:`lines`, line breaks and all: what a signer without snsd's
    rule would produce."""
    signature = rsa_key().sign(lines(fields, keys), padding.PKCS1v15(), hashes.SHA256())
    return {**fields, "SignatureVersion": "2", "Signature": base64.b64encode(signature).decode()}


@pytest.mark.parametrize("line_break", ["\n", "\r"])
@pytest.mark.parametrize(
    ("make", "key"),
    # Not Type: a Type with a line break is no known Type, refused as bad_signature already.
    [(notification, k) for k in NOTIFICATION_SIGNED if k not in ("Message", "Type")]
    + [(subscription_confirmation, k) for k in CONFIRMATION_SIGNED if k not in ("Message", "Type")],
)
def test_a_line_break_in_any_signed_field_but_message_is_refused(make, key, line_break):
    fields = make(subject="s") if make is notification else make()
    keys = NOTIFICATION_SIGNED if make is notification else CONFIRMATION_SIGNED
    fields[key] = fields[key] + line_break + "tail"
    with pytest.raises(TrustError) as e:
        verify_signature(signed_as_written(fields, keys), CERT)
    assert (e.value.status, e.value.reason) == (403, "bad_signed_field")
    assert f"signed field {key} " in e.value.detail


def test_a_line_break_in_message_is_accepted():
    fields = notification(subject="s", message="line one\r\nline two\n")
    verify_signature(signed_as_written(fields, NOTIFICATION_SIGNED), CERT)
    verify_signature(signed(fields), CERT)


def test_unsigned_fields_may_change_without_breaking_the_signature():
    fields = signed(notification())
    fields["UnsubscribeURL"] = "https://elsewhere.example/"
    fields["MessageAttributes"] = {"a": {"Type": "String", "Value": "b"}}
    verify_signature(fields, CERT)


def test_a_different_key_does_not_verify():
    fields = signed(notification(), key=rsa_key("attacker"))
    with pytest.raises(TrustError, match="bad_signature"):
        verify_signature(fields, CERT)


def test_version_1_signature_labelled_version_2_does_not_verify():
    fields = signed(notification(), version="1")
    fields["SignatureVersion"] = "2"
    with pytest.raises(TrustError, match="bad_signature"):
        verify_signature(fields, CERT)


@pytest.mark.parametrize("version", [None, "", "3", "0", 1])
def test_other_signature_versions_are_refused(version):
    fields = signed(notification())
    fields["SignatureVersion"] = version
    with pytest.raises(TrustError) as e:
        verify_signature(fields, CERT)
    assert (e.value.status, e.value.reason) == (403, "unsupported_signature_version")


@pytest.mark.parametrize("signature", [None, "", "not base64 !!", "QUJD"])
def test_missing_or_garbage_signature_is_refused(signature):
    fields = signed(notification())
    fields["Signature"] = signature
    with pytest.raises(TrustError) as e:
        verify_signature(fields, CERT)
    assert e.value.status == 403
    assert e.value.reason in ("missing_signature", "bad_signature")


def test_sign_fields_accepts_str_pem_and_leaves_the_input_alone():
    fields = notification()
    result = sign_fields(fields, private_key_pem(rsa_key()).decode(), "2")
    assert "Signature" not in fields
    verify_signature(result, CERT)
    with pytest.raises(ValueError):
        sign_fields(fields, private_key_pem(rsa_key()), "3")


# -- pinned by mutation testing (issue 18): each of these once let a plausible bug through ------------


@pytest.mark.parametrize("value", [None, 5, ["x"]])
@pytest.mark.parametrize("key", ["MessageId", "Message", "Timestamp"])
def test_a_signed_field_missing_or_not_a_string_cannot_be_signed_or_verified(key, value):
    fields = {**notification(), key: value}
    with pytest.raises(ValueError, match=f"signed field {key} is missing or not a string"):
        string_to_sign(fields)
    genuine = signed(notification())
    with pytest.raises(TrustError) as e:
        verify_signature({**genuine, key: value}, CERT)
    assert (e.value.status, e.value.reason) == (403, "bad_signature")


@pytest.mark.parametrize("junk", ["!", " ", "\n", "*"])
def test_a_signature_with_characters_outside_base64_is_refused(junk):
    # A lenient decoder would skip them and verify the genuine signature underneath.
    fields = signed(notification())
    signature = fields["Signature"]
    fields["Signature"] = signature[:10] + junk + signature[10:]
    with pytest.raises(TrustError) as e:
        verify_signature(fields, CERT)
    assert (e.value.status, e.value.reason) == (403, "bad_signature")


def test_a_certificate_without_an_rsa_key_is_refused():
    fields = signed(notification())
    with pytest.raises(TrustError) as e:
        verify_signature(fields, make_certificate(ec_key()))
    assert (e.value.status, e.value.reason, e.value.detail) == (
        403,
        "untrusted_certificate",
        "certificate key is not RSA",
    )


def test_signing_refuses_unknown_versions_and_keys_that_are_not_rsa():
    with pytest.raises(ValueError, match="unsupported SignatureVersion"):
        sign_fields(notification(), private_key_pem(rsa_key()), "3")
    ec_pem = ec_key().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError, match="RSA private key"):
        sign_fields(notification(), ec_pem, "1")


def test_sign_fields_defaults_to_version_1():
    fields = sign_fields(notification(), private_key_pem(rsa_key()))
    assert fields["SignatureVersion"] == "1"
    verify_signature(fields, CERT)


def test_the_string_to_sign_is_utf_8():
    fields = notification(message="héllo ✓")
    assert "Message\nhéllo ✓\n".encode() in string_to_sign(fields)
    verify_signature(signed(fields, version="2"), CERT)


@pytest.mark.parametrize("signature", ["", None, 5])
def test_an_empty_or_non_string_signature_is_missing(signature):
    fields = {**signed(notification()), "Signature": signature}
    with pytest.raises(TrustError) as e:
        verify_signature(fields, CERT)
    assert (e.value.status, e.value.reason) == (403, "missing_signature")
