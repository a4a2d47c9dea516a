import HTTPTypes
import NIOCore
import NIOHTTPTypes

/// Per-connection rules for clients that upload, which Hummingbird leaves to the application.
///
/// - `Expect: 100-continue` is answered only once the API key was accepted
///   (`sendContinue(on:)`, called by the authenticator), so an unauthenticated client is never
///   invited to upload. curl waits a full second for the interim response before every upload
///   over 1 MiB, so an accepted key gets it at once.
/// - A response marked `Connection: close` (401, 408, 413) ends the connection at most
///   `lingerTime` after it was written, instead of letting the server read (drain) the rest of
///   a body nobody will use for as long as the client sends it: an endless chunked upload would
///   otherwise hold the connection forever. Until then the rest of the body is still read and
///   dropped (a bounded drain, like nginx's lingering close), so a client that finishes its
///   upload before reading the answer (AsyncHTTPClient, Python's http.client) sees the 413
///   rather than a reset.
final class ConnectionGuard: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private var context: ChannelHandlerContext?
    private var continuePending = false
    private var closeAfterResponse = false

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head(let head) = unwrapInboundIn(data) {
            continuePending = head.headerFields[.expect]?.lowercased() == "100-continue"
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(let response):
            if response.status.code >= 200 {
                continuePending = false
                closeAfterResponse = response.headerFields[.connection]?.lowercased() == "close"
            }
            context.write(data, promise: promise)
        case .body:
            context.write(data, promise: promise)
        case .end:
            guard closeAfterResponse else {
                context.write(data, promise: promise)
                return
            }
            closeAfterResponse = false
            let written = context.eventLoop.makePromise(of: Void.self)
            written.futureResult.cascade(to: promise)
            context.writeAndFlush(data, promise: written)
            let linger = Self.lingerTime
            written.futureResult.whenComplete { _ in
                context.eventLoop.assumeIsolated().scheduleTask(in: linger) { context.close(promise: nil) }
            }
        }
    }

    /// How long the input of a connection ended after an error is still read (and dropped).
    static let lingerTime = TimeAmount.seconds(5)

    /// Sends `100 Continue` if the current request asked for it and nothing was answered yet.
    private func sendContinue() {
        guard continuePending, let context else { return }
        continuePending = false
        context.writeAndFlush(wrapOutboundOut(.head(HTTPResponse(status: .continue))), promise: nil)
    }

    /// Invites the client on `channel` to send its body (called once its key was accepted).
    static func sendContinue(on channel: any Channel) {
        channel.eventLoop.execute {
            (try? channel.pipeline.syncOperations.handler(type: ConnectionGuard.self))?.sendContinue()
        }
    }
}
