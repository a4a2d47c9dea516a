import Crypto
import Foundation
import Hummingbird
import Mustache
import NIOCore

/// Renders the console's pages (Mustache, every value escaped) and serves its static assets,
/// all compiled into the binary.
struct ConsoleViews: Sendable {
    let library: MustacheLibrary
    /// A digest of the assets: their URLs carry it, so they can be cached for good.
    let version: String

    /// The console's static files: name → (MIME type, bytes).
    static let assets: [String: (type: String, bytes: [UInt8])] = [
        "console.css": ("text/css; charset=utf-8", PackageResources.console_css),
        "console.js": ("text/javascript; charset=utf-8", PackageResources.console_js),
        "playground.js": ("text/javascript; charset=utf-8", PackageResources.playground_js),
    ]

    init() {
        var library = MustacheLibrary()
        for (name, text) in ConsoleTemplates.all {
            // The templates are part of the binary: one that does not parse is a programming error.
            try! library.register(text, named: name)
        }
        self.library = library
        var hash = SHA256()
        for name in Self.assets.keys.sorted() { hash.update(data: Self.assets[name]!.bytes) }
        self.version = hash.finalize().prefix(6).map { String(format: "%02x", $0) }.joined()
    }

    /// One link of the navigation.
    struct NavLink {
        var href: String
        var label: String
        var current: Bool
    }

    static let operatorPages: [(String, String)] = [
        ("overview", "Overview"), ("keys", "Keys"), ("groups", "Groups"), ("prices", "Prices"), ("channels", "Channels"),
        ("usage", "Usage"), ("jobs", "Jobs"), ("batches", "Batches"), ("playground", "Playground"),
    ]
    static let keyPages: [(String, String)] = [("usage", "Usage"), ("playground", "Playground"), ("models", "Models"), ("quickstart", "Quick start")]

    /// A whole page: `template` with `values`, the navigation for the signed-in role, and the
    /// headers every console page has (set by `ConsoleHeadersMiddleware`).
    func page(_ template: String, title: String, values: [String: Any] = [:], signedIn: (isOperator: Bool, who: String)? = nil, script: String? = nil, status: HTTPResponse.Status = .ok) -> Response {
        var context = values
        context["title"] = title
        context["version"] = version
        if let script { context["script"] = script }
        if let signedIn {
            let pages = signedIn.isOperator ? Self.operatorPages : Self.keyPages
            context["signedIn"] = true
            context["who"] = signedIn.who
            context["nav"] = pages.map { NavLink(href: $0.0, label: $0.1, current: $0.0 == template) }
        }
        let html = library.render(context, withTemplate: template) ?? ""
        return Response(status: status, headers: [.contentType: "text/html; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(string: html)))
    }

    /// A static asset, cached for a year when asked for with the current version (its URL
    /// changes whenever its bytes do).
    func asset(_ name: String, request: Request) -> Response? {
        guard let asset = Self.assets[name] else { return nil }
        var headers: HTTPFields = [.contentType: asset.type]
        headers[.cacheControl] = request.uri.queryParameters.get("v") == version ? "public, max-age=31536000, immutable" : "no-cache"
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: asset.bytes)))
    }
}

/// Money, counts and times as the console shows them.
enum ConsoleFormat {
    static func usd(_ value: Double?) -> String {
        guard let value else { return "unlimited" }
        return value < 1 && value > 0 ? String(format: "$%.4f", value) : String(format: "$%.2f", value)
    }

    static func milliseconds(_ value: Int?) -> String {
        guard let value else { return "–" }
        return value >= 10_000 ? String(format: "%.1f s", Double(value) / 1000) : "\(value) ms"
    }

    static func percent(_ part: Int, of whole: Int) -> String {
        whole == 0 ? "0%" : String(format: "%.1f%%", Double(part) * 100 / Double(whole))
    }

    static func day(_ date: Date) -> String {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyy-MM-dd"
        return formatter.string(from: date)
    }

    static func time(_ date: Date?) -> String {
        guard let date else { return "–" }
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyy-MM-dd HH:mm:ss 'UTC'"
        return formatter.string(from: date)
    }
}
