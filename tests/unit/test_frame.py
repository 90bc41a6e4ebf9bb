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
def test_header_bytes_ends_at_the_first_scan_header_and_is_all_the_reading_depends_on(before: bytes) -> None:
    data = _jpeg(3, (0x22, 0x11, 0x11), [3], before=before)
    info = read_jpeg_info(data)
    assert info.header_bytes == data.index(b"\xff\xda") + 2 + 12  # the first scan's header: 12 bytes for 3 components
    assert read_jpeg_info(data[: info.header_bytes] + b"any entropy-coded data\xff\xd9") == info


def test_a_header_without_a_scan_counts_as_multi_scan_and_is_read_to_its_end() -> None:
    data = jpeg_header(64, 48)  # SOI, SOF0, EOI
    info = read_jpeg_info(data)
    assert info.multi_scan and not info.progressive
    assert info.header_bytes == len(data)
    truncated = data[:-2]  # ends right after the start of frame: its scans are unknown
    assert read_jpeg_info(truncated).multi_scan


# Scans: libjpeg keeps the whole frame's coefficients when a file has more than one scan. The frames
# below are built byte by byte: SOI, a start of frame, tables, then scans of the given component counts.

_DHT = b"\xff\xc4\x00\x14\x00" + b"\x01" + b"\x00" * 15 + b"\x00"  # one DC table of one 1-bit code


def _jpeg(
    components: int,
    sampling: tuple[int, ...],
    scans: list[int],
    *,
    sof: int = 0xC0,
    before: bytes = b"",
    width: int = 64,
    height: int = 48,
    between: bytes = _DHT,
) -> bytes:
    """SOI, `before`, a start of frame, `between`, then one scan per entry of `scans` (its component count), EOI.

    Each scan's entropy-coded data is a few bytes with a stuffed FF 00 and a
    restart marker, as real data has.
    """
    body = bytes([8]) + height.to_bytes(2, "big") + width.to_bytes(2, "big") + bytes([components])
    body += b"".join(bytes([index + 1, sampling[index], 0]) for index in range(components))
    out = b"\xff\xd8" + before + bytes([0xFF, sof]) + (len(body) + 2).to_bytes(2, "big") + body + between
    first = 1
    for count in scans:
        selectors = b"".join(bytes([first + index, 0]) for index in range(count))
        sos = bytes([count]) + selectors + b"\x00\x3f\x00"
        out += b"\xff\xda" + (len(sos) + 2).to_bytes(2, "big") + sos + b"\x12\xff\x00\x34\xff\xd0\x56"
        first += count
    return out + b"\xff\xd9"


@pytest.mark.parametrize(
    ("components", "scans", "sof", "multi_scan"),
    [
        (3, [3], 0xC0, False),  # baseline, one interleaved scan: what cameras and browsers send
        (1, [1], 0xC0, False),  # greyscale: one component, one scan
        (4, [4], 0xC1, False),  # extended sequential CMYK, interleaved
        (3, [1, 1, 1], 0xC0, True),  # baseline, one scan per component: the whole frame's coefficients are kept
        (3, [1, 2], 0xC0, True),
        (3, [2, 1], 0xC1, True),
        (4, [3, 1], 0xC0, True),
        (3, [3], 0xC2, True),  # progressive, whatever its first scan
        (1, [1], 0xC2, True),
        (3, [3], 0xC9, False),  # arithmetic-coded sequential, interleaved
        (3, [1, 1, 1], 0xC9, True),
    ],
)
def test_the_header_walk_knows_whether_a_file_has_more_than_one_scan(components: int, scans: list[int], sof: int, multi_scan: bool) -> None:
    sampling = (0x11,) * components
    info = read_jpeg_info(_jpeg(components, sampling, scans, sof=sof))
    assert info.multi_scan is multi_scan
    assert info.progressive is (sof == 0xC2)
    assert info.sampling == bytes(sampling)


def test_only_the_first_scan_is_read_and_it_decides_exactly() -> None:
    # A first scan of every component is the only scan of a sequential file (each component is in exactly
    # one scan); libjpeg refuses a second one, so the walk needs no look past it.
    single = _jpeg(3, (0x11,) * 3, [3])
    multi = _jpeg(3, (0x11,) * 3, [1, 1, 1])
    assert not read_jpeg_info(single).multi_scan and read_jpeg_info(multi).multi_scan
    # The two differ inside the bytes the reading depends on, so a stream's remembered reading of one never
    # stands for the other.
    assert not multi.startswith(single[: read_jpeg_info(single).header_bytes])


def test_a_scan_header_inside_a_table_does_not_hide_the_real_first_scan() -> None:
    # The walk steps over segments by their length: FF DA inside a table's payload is not a marker.
    decoy = b"\xff\xda\x00\x0c\x03\x01\x00\x02\x00\x03\x00\x00\x3f\x00"
    table = b"\xff\xc4" + (len(decoy) + 2 + 17).to_bytes(2, "big") + b"\x00" + b"\x00" * 16 + decoy
    info = read_jpeg_info(_jpeg(3, (0x11,) * 3, [1, 1, 1], between=table))
    assert info.multi_scan


def test_the_walk_reads_bytearray_and_memoryview_alike() -> None:
    data = _jpeg(3, (0x11,) * 3, [1, 1, 1])
    assert read_jpeg_info(bytearray(data)) == read_jpeg_info(memoryview(data)) == read_jpeg_info(data)


@pytest.mark.parametrize(
    ("width", "height", "components", "sampling", "blocks"),
    [
        (3840, 2160, 3, (0x11, 0x11, 0x11), 3 * 480 * 270),
        (3840, 2160, 3, (0x22, 0x11, 0x11), 480 * 270 + 2 * 240 * 135),  # 4:2:0: chroma a quarter of luma
        (3840, 2160, 3, (0x21, 0x11, 0x11), 480 * 270 + 2 * 240 * 270),  # 4:2:2
        (1001, 1499, 3, (0x22, 0x11, 0x11), 126 * 188 + 2 * 63 * 94),  # luma rounded up to whole 2 x 2 MCUs
        (3840, 2160, 4, (0x11,) * 4, 4 * 480 * 270),
        (129, 64297, 3, (0x44,) * 3, 3 * 20 * 8040),  # 17 x 8038 blocks a component, padded to 4 x 4 MCUs
        (1, 1, 1, (0x11,), 1),
        (1, 4000, 3, (0x22, 0x11, 0x11), 2 * 500 + 2 * 1 * 250),  # a one-pixel strip still has whole MCUs
    ],
)
def test_coefficient_blocks_are_counted_as_libjpeg_allocates_them(
    width: int, height: int, components: int, sampling: tuple[int, ...], blocks: int
) -> None:
    info = read_jpeg_info(_jpeg(components, sampling, [1] * components, width=width, height=height))
    assert info.coefficient_blocks == blocks


@pytest.mark.parametrize(
    ("sampling", "fragment"),
    [((0x00, 0x11, 0x11), "00 11 11"), ((0x22, 0x51, 0x11), "22 51 11"), ((0x11, 0x11, 0x10), "11 11 10")],
)
def test_sampling_factors_outside_one_to_four_are_invalid(sampling: tuple[int, ...], fragment: str) -> None:
    with pytest.raises(FrameValidationError) as caught:
        read_jpeg_info(_jpeg(3, sampling, [3]))
    assert caught.value.code is ErrorCode.INVALID_FRAME
    assert f"sampling factors {fragment}" in caught.value.detail


def test_a_start_of_frame_too_short_for_its_components_is_invalid() -> None:
    data = _jpeg(3, (0x11,) * 3, [3])
    sof = data.index(b"\xff\xc0")
    short = data[: sof + 2] + (8 + 3 * 3 - 1).to_bytes(2, "big") + data[sof + 4 : sof + 2 + 8 + 3 * 3 - 1] + data[sof + 2 + 8 + 3 * 3 :]
    with pytest.raises(FrameValidationError, match="start-of-frame segment too short for its 3 components"):
        read_jpeg_info(short)


def test_a_scan_header_too_short_to_name_its_components_is_invalid() -> None:
    data = _jpeg(3, (0x11,) * 3, [3])
    sos = data.index(b"\xff\xda")
    with pytest.raises(FrameValidationError, match="start-of-scan segment too short"):
        read_jpeg_info(data[:sos] + b"\xff\xda\x00\x02" + b"\xff\xd9")
