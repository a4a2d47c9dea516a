import Foundation
import HTTPTypes
import Hummingbird
import NanoGateCore
import NIOCore

/// The one way a value becomes a JSON answer. `SplicedJSON` writes any `Base64Text` (an image
/// from Google's buffer) as it is, piece by piece, never re-encoded; everything else is
/// `JSONEncoder`'s. `sortedKeys` for the operator's views (stable to diff), Google's and
/// OpenAI's answers in their own order.
func json(_ value: some Encodable, status: HTTPResponse.Status = .ok, headers extra: HTTPFields = [:], sortedKeys: Bool = true) throws -> Response {
    let encoder = JSONEncoder()
    if sortedKeys { encoder.outputFormatting.insert(.sortedKeys) }
    let pieces = try SplicedJSON.encode(value, encoder: encoder)
    let body: ResponseBody
    if pieces.count == 1 {
        body = ResponseBody(byteBuffer: pieces[0])
    } else {
        body = ResponseBody(contentLength: pieces.reduce(0) { $0 + $1.readableBytes }) { writer in
            for piece in pieces { try await writer.write(piece) }
            try await writer.finish(nil)
        }
    }
    var headers: HTTPFields = [.contentType: "application/json"]
    headers.append(contentsOf: extra)
    return Response(status: status, headers: headers, body: body)
}
