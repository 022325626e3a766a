"""Message trust: everything snsd checks before it acts on an SNS delivery.

One module per job:

* :mod:`~snsd.trust.signing` — the string to sign, signing, signature verification;
* :mod:`~snsd.trust.hosts` — which certificate / subscribe URLs may be requested;
* :mod:`~snsd.trust.certs` — fetching, checking and caching signing certificates;
* :mod:`~snsd.trust.topics` — the topic allow-list;
* :mod:`~snsd.trust.verifier` — the whole decision for one envelope, in a safe order;
* :mod:`~snsd.trust.confirm` — confirming subscriptions without SSRF;
* :mod:`~snsd.trust.dedup` — recently seen MessageIds.
"""

from snsd.trust.certs import CertificateStore
from snsd.trust.confirm import SubscriptionConfirmer
from snsd.trust.dedup import DedupCache
from snsd.trust.errors import TrustError
from snsd.trust.hosts import HostTrust
from snsd.trust.topics import TopicAllowList
from snsd.trust.verifier import MessageVerifier

__all__ = [
    "CertificateStore",
    "DedupCache",
    "HostTrust",
    "MessageVerifier",
    "SubscriptionConfirmer",
    "TopicAllowList",
    "TrustError",
]
