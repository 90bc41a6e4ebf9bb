import pytest

from domain import DEFAULT_MAX_FRAME_BYTES, ErrorCode, FrameValidationError, read_jpeg_info, validate_jpeg
from tests.support.media import jpeg, jpeg_header


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


# The header walk, the pixel limit and the decode reduction ------------------------------------------------


def test_the_default_pixel_limit_is_a_4k_frame() -> None:
    from domain import DEFAULT_MAX_FRAME_PIXELS

    assert DEFAULT_MAX_FRAME_PIXELS == 3840 * 2160 == 8_294_400


def test_the_header_walk_stops_after_a_bounded_number_of_segments() -> None:
    from domain.frame import MAX_SEGMENTS_BEFORE_FRAME

    comment = b"\xff\xfe\x00\x02"
    allowed = jpeg_header(64, 48, before=comment * (MAX_SEGMENTS_BEFORE_FRAME - 1))
    assert read_jpeg_info(allowed).width == 64
    flood = b"\xff\xd8" + comment * 1_300_000 + b"\xff\xd9"
    with pytest.raises(FrameValidationError) as caught:
        read_jpeg_info(flood)
    assert caught.value.code is ErrorCode.INVALID_FRAME
    assert f"more than {MAX_SEGMENTS_BEFORE_FRAME} segments" in caught.value.detail
    with pytest.raises(FrameValidationError, match="more than"):
        read_jpeg_info(jpeg_header(64, 48, before=comment * MAX_SEGMENTS_BEFORE_FRAME))


def test_the_header_walk_bounds_fill_bytes_before_a_marker() -> None:
    from domain.frame import MAX_FILL_BYTES

    # The marker's own FF counts: MAX_FILL_BYTES FF bytes in a row are accepted, one more is not.
    assert read_jpeg_info(b"\xff\xd8" + b"\xff" * (MAX_FILL_BYTES - 1) + jpeg_header(64, 48)[2:]).height == 48
    with pytest.raises(FrameValidationError, match="fill bytes"):
        read_jpeg_info(b"\xff\xd8" + b"\xff" * MAX_FILL_BYTES + jpeg_header(64, 48)[2:])
    with pytest.raises(FrameValidationError, match=f"more than {MAX_FILL_BYTES} fill bytes"):
        read_jpeg_info(b"\xff\xd8" + b"\xff" * 5_000_000 + b"\xd9")


@pytest.mark.parametrize("components", [0, 2, 5, 255])
def test_a_header_with_an_unusual_component_count_is_invalid(components: int) -> None:
    with pytest.raises(FrameValidationError, match=f"{components} colour components"):
        read_jpeg_info(jpeg_header(64, 48, components=components))


def test_header_reader_knows_progressive_frames() -> None:
    assert read_jpeg_info(jpeg_header(64, 48, progressive=True)).progressive
    assert not read_jpeg_info(jpeg_header(64, 48)).progressive


def test_the_pixel_limit_is_checked_on_the_declared_size() -> None:
    from domain import check_frame_pixels

    check_frame_pixels(read_jpeg_info(jpeg_header(3840, 2160)), 3840 * 2160)
    with pytest.raises(FrameValidationError) as caught:
        check_frame_pixels(read_jpeg_info(jpeg_header(8000, 5000)), 3840 * 2160)
    assert caught.value.code is ErrorCode.FRAME_TOO_LARGE
    assert caught.value.detail == "frame declares 8000x5000 = 40000000 pixels; the limit is 8294400 pixels"


@pytest.mark.parametrize(
    ("width", "height", "side", "reduction"),
    [
        (3840, 2160, 640, 4),  # 960 x 540: 1/8 would be 480, under the need
        (3840, 2160, 1920, 2),
        (3840, 2160, 1921, 1),
        (3840, 2160, 480, 8),
        (1920, 1080, 640, 2),
        (640, 480, 640, 1),
        (320, 240, 640, 1),  # smaller than the need: decoded whole
        (1, 4000, 640, 4),  # the long side decides; the short one stays one pixel
        (3840, 2160, None, 1),  # a tool that declares nothing gets the full frame
        (3841, 2161, 1921, 2),  # sides round up, as libjpeg rounds them
    ],
)
def test_the_reduction_is_the_largest_that_still_meets_the_need(
    width: int, height: int, side: int | None, reduction: int
) -> None:
    from domain import jpeg_reduction

    info = read_jpeg_info(jpeg_header(width, height))
    assert jpeg_reduction(info, side) == reduction
    if side is not None and reduction > 1:
        assert max(info.reduced_size(reduction)) >= side


@pytest.mark.parametrize(
    "before",
    [b"", b"\xff\xe0\x00\x04ab", b"\xff\xfe\x00\x05xyz" * 3, b"\xff\xff\xff\xe0\x00\x04ab"],  # the last: fill bytes, the careful walk
)
def test_header_bytes_ends_at_the_start_of_frame_and_is_all_the_reading_depends_on(before: bytes) -> None:
    data = jpeg_header(64, 48, before=before)
    info = read_jpeg_info(data)
    assert info.header_bytes == len(data) - 2  # jpeg_header ends with the start of frame, then EOI
    assert read_jpeg_info(data[: info.header_bytes] + b"anything after the start of frame") == info
