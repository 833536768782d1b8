import SocketShared
#if canImport(Glibc)
import Glibc
#endif

/// TCP sockets arrive with the stream channel (issue 4); until then the server refuses them.
func makeStreamSocket(_ connection: ServerConnection, _ info: ChannelInfo, domain: Int32, type: Int32, fd: Int32, stackFD: Int32) throws(Errno) -> ClientSocket {
    throw Errno(EPROTONOSUPPORT)
}
