//! Opening the files a run is given, so that no kind of file can hang or exhaust the host stub:
//! an input (the guest image, the pager's backing image) must be a regular file, checked on the
//! opened descriptor; an output (the serial log, the results files, the trace) may be anything
//! writable, but a FIFO no process reads is refused at once instead of waiting for a reader.
//!
//! Both open without blocking (`O_NONBLOCK`): opening a FIFO for reading would wait for a
//! writer, and for writing for a reader, past any `--timeout`. The flag is cleared again on what
//! is kept, so later reads and writes behave as usual.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// What kind of file a non-regular input is, for the message that refuses it.
fn kind(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Clears `O_NONBLOCK` on `file`, set only so that opening it could not wait.
fn blocking(file: File) -> io::Result<File> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL and F_SETFL on a descriptor this function owns (through `file`); neither
    // touches memory.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// Opens the input at `path` for reading, and its length: a regular file, or an error whose
/// message names what it is instead ("a FIFO, not a regular file"). A FIFO nobody writes, a
/// device such as `/dev/zero` that never ends, a directory: each refused at once.
pub fn open_input(path: &Path) -> io::Result<(File, u64)> {
    let file = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    // The descriptor's own type: the path may have changed since anyone looked at it.
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        let what = kind(meta.file_type());
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{what}, not a regular file")));
    }
    Ok((blocking(file)?, meta.len()))
}

/// Reads the whole input at `path` ([`open_input`]'s rules), refusing one longer than `max`
/// bytes before reading any of it.
pub fn read_input(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let (file, len) = open_input(path)?;
    if len > max {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{len} bytes, more than the {max} accepted")));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // At most `max + 1` bytes even if the file grows meanwhile; one byte more is caught below.
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("it grew past the {max} bytes accepted")));
    }
    Ok(bytes)
}

/// How an output is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputMode {
    /// Created or emptied (results files, the trace).
    Truncate,
    /// Created or added to (the serial log).
    Append,
}

/// Opens the output at `path` for writing: created if missing; a FIFO that no process has open
/// for reading is an error ("no process reads the FIFO") rather than a wait for a reader.
pub fn open_output(path: &Path, mode: OutputMode) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).custom_flags(libc::O_NONBLOCK);
    match mode {
        OutputMode::Truncate => options.truncate(true),
        OutputMode::Append => options.append(true),
    };
    match options.open(path) {
        Ok(file) => blocking(file),
        // open(2): O_WRONLY | O_NONBLOCK on a FIFO with no reader.
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Err(io::Error::new(
            io::ErrorKind::BrokenPipe,
            "a FIFO no process has open for reading (the host stub does not wait for one)",
        )),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("pvagent-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    fn mkfifo(path: &Path) {
        let _ = std::fs::remove_file(path);
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "{}", io::Error::last_os_error());
    }

    /// Each refused at once with what it is: none is read (a FIFO nobody writes would wait for
    /// ever, `/dev/zero` never ends).
    #[test]
    fn inputs_that_are_not_regular_files_are_refused_by_kind() {
        let fifo = temp("input.fifo");
        mkfifo(&fifo);
        for (path, what) in [
            (fifo.as_path(), "a FIFO, not a regular file"),
            (Path::new("/dev/zero"), "a character device, not a regular file"),
            (Path::new("/dev/null"), "a character device, not a regular file"),
            (Path::new("/"), "a directory, not a regular file"),
        ] {
            let e = read_input(path, 1 << 20).unwrap_err();
            assert_eq!(e.to_string(), what, "{}", path.display());
        }
        let file = temp("input.bin");
        std::fs::write(&file, [1, 2, 3]).unwrap();
        assert_eq!(read_input(&file, 3).unwrap(), [1, 2, 3]);
        assert_eq!(read_input(&file, 2).unwrap_err().to_string(), "3 bytes, more than the 2 accepted");
        assert_eq!(open_input(&file).unwrap().1, 3);
        assert_eq!(read_input(&temp("missing"), 3).unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn an_output_fifo_without_a_reader_is_refused_and_one_with_a_reader_is_written() {
        let fifo = temp("output.fifo");
        mkfifo(&fifo);
        let e = open_output(&fifo, OutputMode::Append).unwrap_err();
        assert!(e.to_string().starts_with("a FIFO no process has open for reading"), "{e}");
        // A reader (opened without waiting for a writer), then the output is written as usual.
        let reader = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap();
        let mut out = open_output(&fifo, OutputMode::Truncate).unwrap();
        io::Write::write_all(&mut out, b"line\n").unwrap();
        let mut got = [0u8; 5];
        io::Read::read_exact(&mut &reader, &mut got).unwrap();
        assert_eq!(&got, b"line\n");
        assert!(open_output(Path::new("/"), OutputMode::Truncate).is_err(), "a directory");
        let file = temp("output.txt");
        std::fs::write(&file, b"old").unwrap();
        drop(open_output(&file, OutputMode::Truncate).unwrap());
        assert_eq!(std::fs::read(&file).unwrap(), b"");
    }
}
