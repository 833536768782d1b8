import CLwIP
#if canImport(Glibc)
import Glibc
#endif

/// The errno for an lwIP `err_t`, as lwIP's own socket layer maps them (`err_to_errno`).
func errnoFor(_ err: err_t) -> Int32 {
    switch Int32(err) {
    case 0: return 0
    case -1: return ENOMEM        // ERR_MEM
    case -2: return ENOBUFS       // ERR_BUF
    case -3: return EWOULDBLOCK   // ERR_TIMEOUT
    case -4: return EHOSTUNREACH  // ERR_RTE
    case -5: return EINPROGRESS   // ERR_INPROGRESS
    case -6: return EINVAL        // ERR_VAL
    case -7: return EWOULDBLOCK   // ERR_WOULDBLOCK
    case -8: return EADDRINUSE    // ERR_USE
    case -9: return EALREADY      // ERR_ALREADY
    case -10: return EISCONN      // ERR_ISCONN
    case -11: return ENOTCONN     // ERR_CONN
    case -12: return EIO          // ERR_IF
    case -13: return ECONNABORTED // ERR_ABRT
    case -14: return ECONNRESET   // ERR_RST
    case -15: return ENOTCONN     // ERR_CLSD
    default: return EIO           // ERR_ARG and anything new
    }
}

let errOK = err_t(ERR_OK.rawValue)
