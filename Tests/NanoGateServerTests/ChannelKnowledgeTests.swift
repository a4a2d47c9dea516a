import AsyncHTTPClient
import Foundation
import GeminiEmulator
import Logging
import NanoGateCore
@testable import NanoGateServer
import NanoGateStorage
import NIOCore
import NIOHTTP1
import Testing
import Upstream

/// What each channel learns about the models it may serve (its own model list, its project's
/// refusals, refused keys), kept in the database for every instance (issue 22, part 2).
@Suite(.timeLimit(.minutes(10))) struct ChannelKnowledgeTests {
    static var quiet: Logger {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        return logger
    }

    /// Two channels of equal standing on one Google: an old project's key (its list offers 2.5)
    /// and a new project's (its list does not). Once the start-up check has read both lists,
    /// `nano-banana` goes to the old project only (no refused call on the new one), the other
    /// models to both, and `/ready` says what each model answers with.
    @Test func aChannelServesOnlyTheIDsItsOwnListOffers() async throws {
        try await withGateway(
            googleKeys: [], emulatorKeys: ["new-project", "old-project"],
            configure: {
                $0.checkModelsAtStart = true
                $0.upstream.channels = [
                    ChannelConfiguration(name: "new", kind: .gemini, baseURL: $0.upstream.baseURL, apiKeys: ["new-project"]),
                    ChannelConfiguration(name: "old", kind: .gemini, baseURL: $0.upstream.baseURL, apiKeys: ["old-project"]),
                ]
            },
            emulator: { $0.newProjectKeys = ["new-project"] }
        ) { gateway in
            let store = gateway.dependencies.store
            try await eventually("both channels' model lists are stored") {
                let known = try await ChannelKnowledgeService.load(from: store)
                return known["new"]?.listed != nil && known["old"]?.listed != nil
            }
            let known = try await ChannelKnowledgeService.load(from: store)
            #expect(known["new"]?.listed?.contains("gemini-2.5-flash-image") == false)
            #expect(known["old"]?.listed?.contains("gemini-2.5-flash-image") == true)
            #expect(known["new"]?.listed?.contains("gemini-nano-banana-2.1") == true)

            for _ in 0..<6 {
                let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"p","response_format":"b64_json"}"#)
                #expect(reply.status == 200 && reply.headers.first(name: "X-NanoGate-Upstream-Model") == "gemini-2.5-flash-image", "\(reply.text.prefix(300))")
            }
            #expect(gateway.recorder.all.map(\.apiKey) == Array(repeating: "old-project", count: 6), "never asked the project that cannot use 2.5")
            let ready = try await gateway.get(gateway.baseURL + "/ready")
            let models = ready.json["models"] as? [String: String]
            #expect(models?["nano-banana"] == "gemini-2.5-flash-image" && models?["nano-banana-2"] == "gemini-nano-banana-2.1", "\(ready.text)")
        }
    }

    /// What one instance learned from answers — a project refusing 2.5, a key Google refused —
    /// is in the database, and another instance's pool (started from the same configuration)
    /// routes by it: the refused id is skipped on that channel, the refused key is set aside,
    /// and a key the operator replaced starts afresh.
    @Test func whatAChannelLearnedIsSharedThroughTheDatabase() async throws {
        try await withGateway(
            googleKeys: [], emulatorKeys: ["new-project"],
            configure: {
                $0.upstream.channels = [
                    ChannelConfiguration(name: "bad", kind: .gemini, baseURL: $0.upstream.baseURL, apiKeys: ["revoked-key"], priority: 2),
                    ChannelConfiguration(name: "new", kind: .gemini, baseURL: $0.upstream.baseURL, apiKeys: ["new-project"], priority: 1),
                ]
            },
            emulator: { $0.newProjectKeys = ["new-project"] }
        ) { gateway in
            let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"p","response_format":"b64_json"}"#)
            #expect(reply.status == 200 && reply.headers.first(name: "X-NanoGate-Upstream-Model") == "gemini-nano-banana-2.1", "\(reply.text.prefix(300))")
            let store = gateway.dependencies.store
            try await eventually("the refusals are stored") {
                let known = try await ChannelKnowledgeService.load(from: store)
                return known["new"]?.refusedModels["gemini-2.5-flash-image"] != nil && known["bad"]?.refusedKeys.isEmpty == false
            }
            let refusals = try await store.channelRefusals()
            #expect(!refusals.contains { ($0.fingerprint ?? "").contains("revoked") || $0.item.contains("revoked") }, "never the key itself")
            let key = try #require(refusals.first { $0.kind == "key" })
            #expect(key.channel == "bad" && key.item == "1" && key.fingerprint == KeyRefusal.fingerprint(of: "revoked-key"))

            // Another instance on the same database.
            let other = UpstreamPool(configuration: gateway.configuration.upstream, logger: Self.quiet)
            try await ChannelKnowledgeService(store: store, pool: other, catalog: gateway.configuration.catalog, logger: Self.quiet).applyStored()
            #expect(other.serves(channel: "new", model: "gemini-2.5-flash-image") == .refused)
            #expect(other.serves(channel: "new", model: "gemini-nano-banana-2.1") == .unchecked)
            #expect(!other.mayServe(model: "gemini-2.5-flash-image", aliases: ["nano-banana"]), "the bad channel's only key is refused")
            let bad = try #require(other.status().first { $0.name == "bad" })
            #expect(bad.state == "disabled" && bad.disabledKeys == [1])
            await other.shutdown()

            // The operator replaced the key: the stored refusal no longer applies.
            var replaced = gateway.configuration.upstream
            replaced.channels[0].apiKeys = ["a-new-key"]
            let fixed = UpstreamPool(configuration: replaced, logger: Self.quiet)
            try await ChannelKnowledgeService(store: store, pool: fixed, catalog: gateway.configuration.catalog, logger: Self.quiet).applyStored()
            #expect(fixed.status().first { $0.name == "bad" }?.disabledKeys == [])
            await fixed.shutdown()
        }
    }

    /// An image model a channel lists that the catalog does not know is reported with a
    /// catalog entry the configuration file accepts as it is.
    @Test func unknownImageModelsComeWithACatalogEntry() async throws {
        try await withGateway(emulator: { $0.extraListedModels = ["gemini-4-flash-image", "imagen-5.0-generate", "gemini-4-flash"] }) { gateway in
            let pool = UpstreamPool(configuration: gateway.configuration.upstream, logger: Self.quiet)
            let check = await ModelCheck.run(catalog: gateway.configuration.catalog, pool: pool, logger: Self.quiet)
            await pool.shutdown()
            #expect(check.unknownImageModels.map(\.id) == ["gemini-4-flash-image"], "Imagen's predict models and text models are not suggested")
            #expect(check.unknownImageModels.first?.channels == ["gemini"])
            let contents = try ConfigurationFile.parse(check.suggestions, source: "suggestion")
            let catalog = try gateway.configuration.catalog.applying(contents.models)
            let added = try #require(catalog.model(named: "gemini-4-flash-image"))
            #expect(added.upstreamModel == "gemini-4-flash-image" && added.family == .flash21)
        }
    }
}
