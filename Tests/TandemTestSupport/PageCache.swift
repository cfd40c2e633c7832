#if canImport(Glibc)
    import Glibc
#endif

/// How many of a file's pages the page cache holds, as `mincore` reports them through a mapping of
/// the whole file; nil when the file cannot be opened or mapped.
public func residentPages(_ path: String) -> Int? {
    let descriptor = open(path, O_RDONLY | O_CLOEXEC)
    guard descriptor >= 0 else { return nil }
    defer { close(descriptor) }
    var info = stat()
    guard fstat(descriptor, &info) == 0 else { return nil }
    let size = Int(info.st_size)
    guard size > 0 else { return 0 }
    guard let mapping = mmap(nil, size, PROT_READ, MAP_SHARED, descriptor, 0), mapping != MAP_FAILED else {
        return nil
    }
    defer { munmap(mapping, size) }
    let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
    var vector = [UInt8](repeating: 0, count: (size + pageSize - 1) / pageSize)
    guard mincore(mapping, size, &vector) == 0 else { return nil }
    return vector.reduce(0) { $0 + Int($1 & 1) }
}
