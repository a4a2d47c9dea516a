import HTTPTypes
import NIOCore
import NIOHTTPTypes

/// Per-connection rules for clients that upload, which Hummingbird leaves to the application.
///
/// - `Expect: 100-continue` is answered only once the API key was accepted
///   (`sendContinue(on:)`, called by the authenticator), so an unauthenticated client is never
///   invited to upload. curl waits a full second for the interim response before every upload
///   over 1 MiB, so an accepted key gets it at once.
/// - A response marked `Connection: close` (401, 408, 413) to a request whose body is chunked
///   or declared larger than `maxDrainBytes` ends the connection instead of letting the server
///   read (drain) the rest of a body nobody will use for as long as the client sends it: an
///   endless chunked upload would otherwise hold the connection forever. (A smaller declared
///   body is drained as usual: it is finite and cheap, and every client then reads the answer.)
///   Like nginx's lingering close, the rest of the body is still read and dropped for a while,
///   so a client that finishes its upload before reading the answer (AsyncHTTPClient, Python's
///   http.client) sees the 413 rather than a reset: the connection closes `lingerPause` after
///   the client's last byte (generous: a client that stopped uploading to read the answer
///   closes by itself), and `lingerTime` after the answer at the latest.
/// - Any other error answer written before its request's body arrived (a 401 to a small
///   upload, say) gets the same bound: the body may still be read and dropped, but if it has
///   not ended `lingerTime` after the answer (a client trickling a byte now and then), the
///   connection is closed. A body that does end in time keeps the connection as usual.
final class ConnectionGuard: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private var context: ChannelHandlerContext?
    private var continuePending = false
    private var closeAfterResponse = false
    /// Whether the current request's body is chunked or declared over `maxDrainBytes`.
    private var bodyIsUnbounded = false
    /// Set once an answer marked `Connection: close` was written: when the connection ends.
    private var lingerDeadline: NIODeadline?
    private var lingerTimer: Scheduled<Void>?
    /// Between a request's head and the end of its response.
    private var awaitingResponse = false
    /// Whether the current request's body has fully arrived.
    private var requestEnded = true
    /// Whether the answer being written is an error (status 400 or more).
    private var answerIsError = false
    /// Whether the lingering ends in a close whatever the client does (an unbounded body).
    private var closeForGood = false
    /// Longest time a connection is still read after an error answer to an unfinished body.
    let lingerTime: TimeAmount

    init(lingerTime: TimeAmount = ConnectionGuard.defaultLingerTime) {
        self.lingerTime = lingerTime
    }

    /// A client that closed its side while its request is being answered has gone (Hummingbird
    /// allows half-closed connections, so this arrives as `inputClosed`, not as a close): close
    /// the connection, so `DisconnectMiddleware` cancels the request's upstream work. (nginx does
    /// the same by default; an HTTP/1.1 client that half-closes and still waits is very rare.)
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if awaitingResponse, let event = event as? ChannelEvent, event == .inputClosed {
            context.close(promise: nil)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        lingerTimer?.cancel()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if lingerDeadline != nil { scheduleLingerClose(context) }
        switch unwrapInboundIn(data) {
        case .end:
            requestEnded = true
            // The body ended within the linger: nothing is held, the connection goes on as usual.
            if lingerDeadline != nil && !closeForGood {
                lingerDeadline = nil
                lingerTimer?.cancel()
                lingerTimer = nil
            }
        case .body:
            break
        case .head(let head):
            requestEnded = false
            awaitingResponse = true
            continuePending = head.headerFields[.expect]?.lowercased() == "100-continue"
            if let length = head.headerFields[.contentLength].flatMap({ Int($0) }) {
                bodyIsUnbounded = length > Self.maxDrainBytes
            } else {
                bodyIsUnbounded = head.headerFields[.transferEncoding]?.lowercased().contains("chunked") == true
            }
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(let response):
            if response.status.code >= 200 {
                continuePending = false
                closeAfterResponse = bodyIsUnbounded && response.headerFields[.connection]?.lowercased() == "close"
                answerIsError = response.status.code >= 400
            }
            context.write(data, promise: promise)
        case .body:
            context.write(data, promise: promise)
        case .end:
            awaitingResponse = false
            guard closeAfterResponse || (answerIsError && !requestEnded) else {
                context.write(data, promise: promise)
                return
            }
            closeForGood = closeAfterResponse
            closeAfterResponse = false
            let written = context.eventLoop.makePromise(of: Void.self)
            written.futureResult.cascade(to: promise)
            context.writeAndFlush(data, promise: written)
            written.futureResult.assumeIsolated().whenComplete { _ in
                guard self.closeForGood || !self.requestEnded else { return }
                self.lingerDeadline = .now() + self.lingerTime
                self.scheduleLingerClose(context)
            }
        }
    }

    /// Largest declared body that is still drained after an error (finite, and cheap to read).
    static let maxDrainBytes = 16 * 1024 * 1024
    /// Longest time a connection is still read (and dropped) after an error answer to a body
    /// that had not ended (`GatewayConfiguration.errorLinger`).
    static let defaultLingerTime = TimeAmount.seconds(30)
    /// Longest pause in the client's upload before such a connection is closed.
    static let lingerPause = TimeAmount.seconds(15)

    /// (Re)arms the close: `lingerPause` from now, never past `lingerDeadline`.
    private func scheduleLingerClose(_ context: ChannelHandlerContext) {
        guard let deadline = lingerDeadline else { return }
        lingerTimer?.cancel()
        let at = min(deadline, .now() + Self.lingerPause)
        lingerTimer = context.eventLoop.assumeIsolated().scheduleTask(deadline: at) { context.close(promise: nil) }
    }

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
