//! SCSI block commands (SBC): typed CDB parsing, responses, sense.
