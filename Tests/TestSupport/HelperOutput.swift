#if canImport(Glibc)
import Glibc
#endif

/// How a helper program (a test's second process) reports to the test: one line at a time on
/// stdout, flushed at once so the test sees it while the helper keeps running.
public enum HelperOutput {
    /// Prints `line` and flushes it.
    public static func say(_ line: String) {
        print(line)
        fflush(nil)
    }

    /// Prints "error: MESSAGE" and exits with status 2 (the helper could not even set up).
    public static func fail(_ message: String) -> Never {
        say("error: \(message)")
        exit(2)
    }
}
