import Foundation
import HTTPTypes
import Hummingbird
import NanoGateCore
import NIOCore

/// The one way a value becomes a JSON answer. `SplicedJSON` writes any `Base64Text` (an image
/// from Google's buffer) as it is, piece by piece, never re-encoded; everything else is
/// `JSONEncoder`'s. `sortedKeys` for the operator's views (stable to diff), Google's and
/// OpenAI's answers in their own order.
///
/// `beforeLastByte` runs after all but the answer's last byte is written (a settlement's ledger
/// write runs meanwhile): the client has a whole answer only once it returned.
func json(
    _ value: some Encodable, status: HTTPResponse.Status = .ok, headers extra: HTTPFields = [:], sortedKeys: Bool = true,
    beforeLastByte: (@Sendable () async -> Void)? = nil
) throws -> Response {
    let encoder = JSONEncoder()
    if sortedKeys { encoder.outputFormatting.insert(.sortedKeys) }
    var pieces = try SplicedJSON.encode(value, encoder: encoder)
    let body: ResponseBody
    if let beforeLastByte, var last = pieces.popLast(), last.readableBytes > 0 {
        let length = pieces.reduce(last.readableBytes) { $0 + $1.readableBytes }
        if let lead = last.readSlice(length: last.readableBytes - 1), lead.readableBytes > 0 { pieces.append(lead) }
        body = ResponseBody(contentLength: length) { [pieces, last] writer in
            for piece in pieces { try await writer.write(piece) }
            await beforeLastByte()
            try await writer.write(last)
            try await writer.finish(nil)
        }
    } else if pieces.count == 1 {
        body = ResponseBody(byteBuffer: pieces[0])
    } else {
        body = ResponseBody(contentLength: pieces.reduce(0) { $0 + $1.readableBytes }) { [pieces] writer in
            for piece in pieces { try await writer.write(piece) }
            try await writer.finish(nil)
        }
    }
    var headers: HTTPFields = [.contentType: "application/json"]
    headers.append(contentsOf: extra)
    return Response(status: status, headers: headers, body: body)
}
