fn main() -> anyhow::Result<()> {
    contactier_runtime::host::main(&contactier_contacts::SERVICE)
}
