"""Errors that name what a user must fix: the patient, the file and the DICOM tag."""

from __future__ import annotations


class PatientInputError(Exception):
    """Bad input for one patient. The stage records it and the other patients go on.

    >>> str(PatientInputError("missing tag", patient="P1", file="a/1.dcm", tag="PatientWeight"))
    'patient P1: missing tag [file a/1.dcm] [tag PatientWeight]'
    """

    def __init__(
        self,
        message: str,
        *,
        patient: str | None = None,
        series: str | None = None,
        file: str | None = None,
        tag: str | None = None,
    ) -> None:
        self.message = message
        self.patient = patient
        self.series = series
        self.file = file
        self.tag = tag
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"patient {self.patient}: {self.message}" if self.patient else self.message
        for name in ("series", "file", "tag"):
            value = getattr(self, name)
            if value:
                text += f" [{name} {value}]"
        return text

    def as_dict(self) -> dict:
        return {
            "message": self.message,
            "patient": self.patient,
            "series": self.series,
            "file": self.file,
            "tag": self.tag,
        }
