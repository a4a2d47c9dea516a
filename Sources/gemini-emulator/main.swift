import ArgumentParser
import GeminiEmulator
import Hummingbird
import Logging
#if canImport(Glibc)
import CMalloc
#endif

/// Runs the offline Gemini API on its own, e.g. for the benchmark or to point another gateway at it.
@main
struct GeminiEmulatorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gemini-emulator",
        abstract: "An offline Gemini API (generateContent) that returns real PNGs of Google's sizes."
    )

    @Option(help: "Address to listen on.") var host = "127.0.0.1"
    @Option(help: "Port to listen on (0 picks a free one).") var port = 8090
    @Option(help: "Milliseconds each generation takes.") var latencyMs = 0
    @Option(help: "Accept only this x-goog-api-key (repeatable); any key when absent.") var acceptKey: [String] = []

    func run() async throws {
        #if canImport(Glibc)
        _ = mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024)
        _ = mallopt(M_TRIM_THRESHOLD, 128 * 1024 * 1024)
        #endif
        var logger = Logger(label: "gemini-emulator")
        logger.logLevel = .info
        let emulator = GeminiEmulator(configuration: .init(
            acceptedKeys: acceptKey.isEmpty ? nil : Set(acceptKey), latency: .milliseconds(latencyMs)
        ))
        let app = Application(
            router: emulator.router(),
            configuration: .init(address: .hostname(host, port: port), serverName: "gemini-emulator"),
            onServerRunning: { channel in
                print("gemini-emulator listening on http://\(host):\(channel.localAddress?.port ?? port)")
            },
            logger: logger
        )
        try await app.runService()
    }
}
