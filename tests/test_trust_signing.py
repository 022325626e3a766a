"""The SNS signature scheme, with real RSA keys: what is signed, both versions, every field tampered."""

from __future__ import annotations

import pytest

from snsd.trust.errors import TrustError
from snsd.trust.signing import sign_fields, string_to_sign, verify_signature
from tests.trust_helpers import (
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
