"""The shared hypothesis strategies (tests/support/strategies.py) produce valid messages."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kms.protocol.codec import encode_request, encode_response
from kms.protocol.messages import (
    PingResponse,
    SignedProposalResponse,
    SignedVoteResponse,
    empty_proposal,
    empty_vote,
)
from kms.protocol.version import ProtocolVersion
from tests.support.strategies import ALL_VERSIONS, as_decoded, requests, responses


@pytest.mark.parametrize("version", ALL_VERSIONS)
@given(data=st.data())
def test_generated_messages_are_encodable(version: ProtocolVersion, data: st.DataObject) -> None:
    """Every generated request/response encodes under its version (the strategies are valid)."""
    req = data.draw(requests(version))
    resp = data.draw(responses(version))
    assert encode_request(req, version)[0] & 7 == 2
    assert encode_response(resp, version)[0] & 7 == 2


def test_as_decoded_fills_in_the_empty_vote_and_proposal() -> None:
    """The helper maps None to Go's empty vote/proposal and leaves other responses alone."""
    assert as_decoded(SignedVoteResponse(None)) == SignedVoteResponse(empty_vote())
    assert as_decoded(SignedProposalResponse(None)) == SignedProposalResponse(empty_proposal())
    assert as_decoded(PingResponse()) == PingResponse()
