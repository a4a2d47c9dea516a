import SQLKit

/// PostgreSQL's schema as of version 5 — the same tables, columns and money rules as SQLite's
/// first five migrations, in one step. The triggers are PL/pgSQL: PostgreSQL runs a trigger
/// inside the statement that fired it, so a reservation, a release and a settlement each stay
/// one atomic statement. Under concurrency the hold's `UPDATE … WHERE balance >= amount` waits
/// for the key's row lock and re-checks the balance after it (READ COMMITTED), so two
/// instances can never both spend the last of a key's credit.
enum PostgresSchema {
    static func createVersion5(_ database: any SQLDatabase) async throws {
        for statement: SQLQueryString in [
            """
            CREATE TABLE IF NOT EXISTS api_keys (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                key_group TEXT NOT NULL,
                secret_hash TEXT NOT NULL UNIQUE,
                prefix TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                revoked_at BIGINT,
                credit_micro_usd BIGINT,
                spent_micro_usd BIGINT NOT NULL DEFAULT 0,
                reserved_micro_usd BIGINT NOT NULL DEFAULT 0,
                expires_at BIGINT,
                models TEXT,
                rpm INTEGER,
                concurrency INTEGER,
                disabled INTEGER NOT NULL DEFAULT 0
            )
            """,
            // One active key per name; revoked keys keep their row (and name) for the usage log.
            "CREATE UNIQUE INDEX IF NOT EXISTS api_keys_active_name ON api_keys (name) WHERE revoked_at IS NULL",
            """
            CREATE TABLE IF NOT EXISTS usage_log (
                id TEXT PRIMARY KEY,
                key_id TEXT NOT NULL,
                endpoint TEXT NOT NULL,
                model TEXT NOT NULL,
                status INTEGER NOT NULL,
                images INTEGER NOT NULL,
                input_tokens INTEGER NOT NULL,
                output_tokens INTEGER NOT NULL,
                total_tokens INTEGER NOT NULL,
                cost_micro_usd BIGINT NOT NULL,
                error_code TEXT,
                created_at BIGINT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                upstream_cost_micro_usd BIGINT NOT NULL DEFAULT 0,
                request_id TEXT,
                key_name TEXT,
                key_group TEXT,
                upstream_model TEXT,
                requested_size TEXT,
                latency_ms INTEGER NOT NULL DEFAULT 0,
                input_text_tokens INTEGER NOT NULL DEFAULT 0,
                input_image_tokens INTEGER NOT NULL DEFAULT 0,
                output_text_tokens INTEGER NOT NULL DEFAULT 0,
                output_image_tokens INTEGER NOT NULL DEFAULT 0,
                upstream_key TEXT,
                reservation_id TEXT,
                upstream_attempts TEXT
            )
            """,
            "CREATE INDEX IF NOT EXISTS usage_log_key_time ON usage_log (key_id, created_at)",
            "CREATE INDEX IF NOT EXISTS usage_log_time ON usage_log (created_at)",
            "CREATE TABLE IF NOT EXISTS thought_signatures (hash TEXT PRIMARY KEY, signature TEXT NOT NULL, created_at BIGINT NOT NULL)",
            """
            CREATE TABLE IF NOT EXISTS key_groups (
                name TEXT PRIMARY KEY,
                response_format TEXT NOT NULL,
                multiplier_ppm BIGINT NOT NULL DEFAULT 1000000,
                models TEXT,
                created_at BIGINT NOT NULL
            )
            """,
            """
            INSERT INTO key_groups (name, response_format, created_at)
            VALUES ('default', 'url', EXTRACT(EPOCH FROM now())::BIGINT), ('gemini', 'b64_json', EXTRACT(EPOCH FROM now())::BIGINT)
            ON CONFLICT (name) DO NOTHING
            """,
            """
            CREATE TABLE IF NOT EXISTS prices (
                upstream_model TEXT PRIMARY KEY,
                input_text BIGINT NOT NULL,
                input_image BIGINT NOT NULL,
                output_text BIGINT NOT NULL,
                output_image BIGINT NOT NULL
            )
            """,
            """
            CREATE TABLE IF NOT EXISTS reservations (
                id TEXT PRIMARY KEY,
                key_id TEXT NOT NULL,
                amount_micro_usd BIGINT NOT NULL,
                owner TEXT NOT NULL,
                lease_until BIGINT NOT NULL
            )
            """,
            """
            CREATE TABLE IF NOT EXISTS idempotent_results (
                key_id TEXT NOT NULL,
                idempotency_key TEXT NOT NULL,
                body_hash TEXT NOT NULL,
                state TEXT NOT NULL,
                status INTEGER,
                content_type TEXT,
                body TEXT,
                created_at BIGINT NOT NULL,
                PRIMARY KEY (key_id, idempotency_key)
            )
            """,
            "CREATE TABLE IF NOT EXISTS upstream_channels (name TEXT PRIMARY KEY, config TEXT NOT NULL, updated_at BIGINT NOT NULL)",
            // Inserting a reservation holds its amount or aborts the statement.
            """
            CREATE OR REPLACE FUNCTION nanogate_reservation_hold() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                UPDATE api_keys SET reserved_micro_usd = reserved_micro_usd + NEW.amount_micro_usd
                WHERE id = NEW.key_id AND credit_micro_usd IS NOT NULL
                  AND credit_micro_usd - spent_micro_usd - reserved_micro_usd >= NEW.amount_micro_usd;
                IF NOT FOUND THEN
                    RAISE EXCEPTION 'insufficient_quota';
                END IF;
                RETURN NEW;
            END
            $$
            """,
            "CREATE OR REPLACE TRIGGER reservations_hold BEFORE INSERT ON reservations FOR EACH ROW EXECUTE FUNCTION nanogate_reservation_hold()",
            // Deleting one (settled, or its lease ran out) releases it.
            """
            CREATE OR REPLACE FUNCTION nanogate_reservation_release() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                UPDATE api_keys SET reserved_micro_usd = reserved_micro_usd - OLD.amount_micro_usd WHERE id = OLD.key_id;
                RETURN OLD;
            END
            $$
            """,
            "CREATE OR REPLACE TRIGGER reservations_release AFTER DELETE ON reservations FOR EACH ROW EXECUTE FUNCTION nanogate_reservation_release()",
            // Inserting a usage row releases its reservation and charges its cost.
            """
            CREATE OR REPLACE FUNCTION nanogate_usage_charge() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.reservation_id IS NOT NULL THEN
                    DELETE FROM reservations WHERE id = NEW.reservation_id;
                END IF;
                IF NEW.cost_micro_usd <> 0 THEN
                    UPDATE api_keys SET spent_micro_usd = spent_micro_usd + NEW.cost_micro_usd WHERE id = NEW.key_id;
                END IF;
                RETURN NEW;
            END
            $$
            """,
            "CREATE OR REPLACE TRIGGER usage_charge AFTER INSERT ON usage_log FOR EACH ROW EXECUTE FUNCTION nanogate_usage_charge()",
        ] {
            try await database.raw(statement).run()
        }
    }
}
