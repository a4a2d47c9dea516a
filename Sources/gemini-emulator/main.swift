import Foundation
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
    @Option(help: "Milliseconds a batch (:batchGenerateContent) stays pending before it is answered.") var batchDelayMs = 2000
    @Option(help: "Accept only this x-goog-api-key (repeatable); any key when absent.") var acceptKey: [String] = []
    @Option(help: "Accept only this bearer token on the Vertex AI paths (repeatable); any token when absent.") var acceptToken: [String] = []
    @Option(help: "Answer every generation with this fault (429, 503, 500, garbage), whatever the prompt.") var fault: String?
    @Option(help: "Answer 404 NOT_FOUND for this model id, as Google does for a retired model (repeatable; the 2026 preview ids always are).")
    var retired: [String] = []
    @Option(help: "Serve this model id again although Google shut it down (repeatable; e.g. gemini-3.1-flash-image).")
    var revive: [String] = []
    @Option(help: "Treat this key as a new project's: refused on gemini-2.5-flash-image (repeatable).")
    var newProjectKey: [String] = []
    @Flag(help: "Treat every key as a new project's (a new operator today).") var newProject = false
    @Option(help: "List this model id too, as Google lists a model the gateway does not know yet (repeatable; never served).")
    var listModel: [String] = []

    func run() async throws {
        #if canImport(Glibc)
        _ = mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024)
        _ = mallopt(M_TRIM_THRESHOLD, 128 * 1024 * 1024)
        #endif
        var logger = Logger(label: "gemini-emulator")
        logger.logLevel = .info
        var configuration = EmulatorConfiguration(acceptedKeys: acceptKey.isEmpty ? nil : Set(acceptKey), latency: .milliseconds(latencyMs))
        configuration.batchDelay = .milliseconds(batchDelayMs)
        configuration.retiredModels.formUnion(retired)
        configuration.retiredModels.subtract(revive)
        configuration.newProjectKeys = Set(newProjectKey)
        configuration.everyKeyIsNewProject = newProject
        configuration.extraListedModels = listModel
        configuration.acceptedBearerTokens = acceptToken.isEmpty ? nil : Set(acceptToken)
        configuration.control.fault = fault
        let emulator = GeminiEmulator(configuration: configuration)
        let app = Application(
            router: emulator.router(),
            configuration: .init(address: .hostname(host, port: port), serverName: "gemini-emulator"),
            onServerRunning: { channel in
                // Written at once (print is buffered when stdout is a pipe): scripts wait for this line.
                FileHandle.standardOutput.write(Data("gemini-emulator listening on http://\(host):\(channel.localAddress?.port ?? port)\n".utf8))
            },
            logger: logger
        )
        try await app.runService()
    }
}
