import pytest

from domain import DEFAULT_MAX_FRAME_BYTES, ErrorCode, FrameValidationError, read_jpeg_info, validate_jpeg
from tests.support.media import jpeg


def test_default_limit_is_five_mebibytes() -> None:
    assert DEFAULT_MAX_FRAME_BYTES == 5_242_880


def test_valid_jpeg_passes() -> None:
    validate_jpeg(jpeg())


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n....\xff\xd9", "SOI"),
        (b"\xff\xd8\x00\x00\x00", "EOI"),
        (b"\xff\xd8", "EOI"),
        (b"\xff\xd9", "SOI"),
    ],
)
def test_malformed_frames_are_invalid_frame(data: bytes, fragment: str) -> None:
    with pytest.raises(FrameValidationError) as caught:
        validate_jpeg(data)
    assert caught.value.code is ErrorCode.INVALID_FRAME
    assert fragment in caught.value.detail


def test_size_limit_is_checked_before_markers() -> None:
    with pytest.raises(FrameValidationError) as caught:
        validate_jpeg(b"x" * 101, max_bytes=100)
    assert caught.value.code is ErrorCode.FRAME_TOO_LARGE
    assert "101 bytes" in caught.value.detail and "100 bytes" in caught.value.detail


def test_exactly_at_the_limit_is_accepted() -> None:
    data = jpeg()
    validate_jpeg(data, max_bytes=len(data))
    with pytest.raises(FrameValidationError):
        validate_jpeg(data, max_bytes=len(data) - 1)


def test_frame_validation_error_only_carries_frame_codes() -> None:
    with pytest.raises(ValueError):
        FrameValidationError(ErrorCode.INTERNAL_ERROR, "nope")
    error = FrameValidationError(ErrorCode.INVALID_FRAME, "bad")
    assert error.to_message() == {"error": "invalid_frame", "detail": "bad"}


def test_header_reader_finds_dimensions_without_decoding() -> None:
    info = read_jpeg_info(jpeg(640, 480))
    assert (info.width, info.height, info.components) == (640, 480, 3)


@pytest.mark.parametrize("data", [b"\xff\xd8\xff\xd9", b"\xff\xd8\x12\x34\xff\xd9", b"\xff\xd8\xff\xe0\xff\xff"])
def test_header_reader_rejects_headers_without_a_frame(data: bytes) -> None:
    with pytest.raises(FrameValidationError) as caught:
        read_jpeg_info(data)
    assert caught.value.code is ErrorCode.INVALID_FRAME


def test_error_codes_may_be_given_as_their_wire_strings() -> None:
    from domain import ErrorCode, FrameValidationError, StreamError

    error = FrameValidationError("invalid_frame", "not a JPEG")
    assert error.code is ErrorCode.INVALID_FRAME and error.to_message() == {"error": "invalid_frame", "detail": "not a JPEG"}
    assert StreamError("server_busy", "full").code is ErrorCode.SERVER_BUSY


def test_an_unknown_error_code_is_refused_naming_the_accepted_ones() -> None:
    import pytest

    from domain import FrameValidationError, StreamError

    with pytest.raises(ValueError, match=r"unknown error code 'oops'; expected one of \['invalid_message'"):
        StreamError("oops", "x")
    with pytest.raises(ValueError, match="invalid_frame or frame_too_large, not 'server_busy'"):
        FrameValidationError("server_busy", "x")
