"""The few header values a series slice needs, read without building a pydicom Dataset.

pydicom parses and keeps every element of a file, about 1 ms a file: most of the cost of
reading a CT series, whose slices need only a dozen tags and where the pixel bytes start. This
reader walks the elements of the common case, an uncompressed little-endian single-frame file,
keeps those tags and stops at PixelData. Anything else (compressed or big-endian transfer
syntaxes, multi-frame files, a tag it cannot decode, a file cut short) gives ``None``, and the
caller reads the file with pydicom, which also names what is wrong with it.

    header = read_native_header("1-001.dcm")
    header.values["ImagePositionPatient"], header.pixel_offset
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
PIXEL_DATA = 0x7FE00010
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
# Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT"}
_LONG_VRS.add(b"UV")
_HEAD_BYTES = 16384  # headers are a few kB: the first read nearly always holds them

# tag -> (keyword, kind): "us" binary uint16, "ds"/"is" numbers in text, "text"
_WANTED = {
    0x00080018: ("SOPInstanceUID", "text"),
    0x00200032: ("ImagePositionPatient", "ds"),
    0x00200037: ("ImageOrientationPatient", "ds"),
    0x00280002: ("SamplesPerPixel", "us"),
    0x00280004: ("PhotometricInterpretation", "text"),
    0x00280008: ("NumberOfFrames", "is"),
    0x00280010: ("Rows", "us"),
    0x00280011: ("Columns", "us"),
    0x00280030: ("PixelSpacing", "ds"),
    0x00280100: ("BitsAllocated", "us"),
    0x00280101: ("BitsStored", "us"),
    0x00280103: ("PixelRepresentation", "us"),
    0x00281052: ("RescaleIntercept", "ds"),
    0x00281053: ("RescaleSlope", "ds"),
}
_MULTI_FRAME = 0x52009230  # PerFrameFunctionalGroupsSequence: an enhanced multi-frame file


class _Unusual(Exception):
    """The file is not the common case: leave it to pydicom."""


class _NeedMore(Exception):
    """The header goes on past the bytes read so far."""


@dataclass(frozen=True)
class NativeHeader:
    """``values``: the wanted tags present (keyword -> str, int or tuple of floats);
    ``pixel_offset`` and ``pixel_length``: where the PixelData value lies in the file."""

    values: dict
    pixel_offset: int
    pixel_length: int


def read_native_header(fp) -> NativeHeader | None:
    """The header of an open DICOM file (binary, at its start), or None if it is unusual.

    Leaves ``fp`` at an unspecified position."""
    data = fp.read(_HEAD_BYTES)
    try:
        try:
            return _parse(data)
        except _NeedMore:
            return _parse(data + fp.read())
    except (_Unusual, _NeedMore, struct.error, ValueError, UnicodeDecodeError):
        return None


def _parse(data: bytes) -> NativeHeader:
    if data[128:132] != b"DICM":
        raise _Unusual
    pos, meta = _file_meta(data, 132)
    syntax = meta.get("TransferSyntaxUID", "")
    if syntax not in (EXPLICIT_VR_LE, IMPLICIT_VR_LE):
        raise _Unusual
    explicit = syntax == EXPLICIT_VR_LE
    values: dict = {k: v for k, v in meta.items() if k == "MediaStorageSOPInstanceUID"}
    while True:
        tag, vr, length, pos = _element(data, pos, explicit)
        if tag == PIXEL_DATA:
            if length == _UNDEFINED:
                raise _Unusual  # encapsulated (compressed) pixels
            return NativeHeader(values, pos, length)
        if tag > PIXEL_DATA or tag == _MULTI_FRAME:
            raise _Unusual
        if length == _UNDEFINED:
            if explicit and vr != b"SQ":
                raise _Unusual  # e.g. UN of undefined length: pydicom knows what to do
            pos = _skip_sequence(data, pos, explicit)
            continue
        if tag in _WANTED:
            if pos + length > len(data):
                raise _NeedMore
            keyword, kind = _WANTED[tag]
            values[keyword] = _value(data[pos : pos + length], kind, vr, explicit)
        pos += length


_META = {0x00020003: "MediaStorageSOPInstanceUID", 0x00020010: "TransferSyntaxUID"}


def _file_meta(data: bytes, pos: int) -> tuple[int, dict[str, str]]:
    """Group 0002 (always explicit VR little endian); the position after it and the UIDs of
    :data:`_META` (the transfer syntax; the instance UID, for files whose dataset lacks it)."""
    meta = {}
    while pos + 4 <= len(data) and struct.unpack_from("<H", data, pos)[0] == 0x0002:
        tag, _, length, pos = _element(data, pos, explicit=True)
        if length == _UNDEFINED:
            raise _Unusual
        if tag in _META:
            meta[_META[tag]] = data[pos : pos + length].decode("ascii").strip("\x00 ")
        pos += length
    if pos + 4 > len(data):
        raise _NeedMore
    return pos, meta


def _element(data: bytes, pos: int, explicit: bool) -> tuple[int, bytes, int, int]:
    """(tag, VR or b"", value length, position of the value) of the element at ``pos``."""
    if pos + 8 > len(data):
        raise _NeedMore
    group, number = struct.unpack_from("<HH", data, pos)
    tag = (group << 16) | number
    if group == 0xFFFE or not explicit:  # items and delimiters carry no VR
        return tag, b"", struct.unpack_from("<I", data, pos + 4)[0], pos + 8
    vr = data[pos + 4 : pos + 6]
    if vr in _LONG_VRS:
        if pos + 12 > len(data):
            raise _NeedMore
        return tag, vr, struct.unpack_from("<I", data, pos + 8)[0], pos + 12
    return tag, vr, struct.unpack_from("<H", data, pos + 6)[0], pos + 8


def _skip_sequence(data: bytes, pos: int, explicit: bool) -> int:
    """Past an undefined-length sequence whose first item starts at ``pos``."""
    while True:
        tag, _, length, pos = _element(data, pos, explicit)
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise _Unusual
        pos = pos + length if length != _UNDEFINED else _skip_item(data, pos, explicit)


def _skip_item(data: bytes, pos: int, explicit: bool) -> int:
    """Past an undefined-length item whose first element starts at ``pos``."""
    while True:
        tag, vr, length, pos = _element(data, pos, explicit)
        if tag == _ITEM_END:
            return pos
        if length == _UNDEFINED:
            if explicit and vr != b"SQ":
                raise _Unusual
            pos = _skip_sequence(data, pos, explicit)
        else:
            pos += length


def _value(raw: bytes, kind: str, vr: bytes, explicit: bool):
    if kind == "us":
        if (explicit and vr != b"US") or len(raw) != 2:
            raise _Unusual
        return struct.unpack("<H", raw)[0]
    text = raw.decode("ascii").strip("\x00 ")
    if kind == "text":
        return text
    if kind == "is":
        return int(text) if text else None
    parts = [part.strip() for part in text.split("\\")]
    return tuple(float(part) for part in parts) if text else None
